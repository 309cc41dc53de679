"""POST /v1/predict: one image in, its most likely classes out.

The request is admitted (bounded queue), then runs under --timeout: the upload is read, decoded and
preprocessed by `Bundle.model_input` (the same code as `graft predict`) in the decode thread pool, batched with
other requests, run by the engine, and ranked by `Bundle.rank`.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated

import torch
from fastapi import APIRouter, Query, Request

from graft.bundle import Bundle
from graft.data.image_limits import ImageLimits, ImageTooLarge
from graft.errors import GraftError
from graft.serve.api.deps import AdmissionDep, DecoderDep, HolderDep, SettingsDep
from graft.serve.api.schemas import ERRORS, ClassProbability, Latency, PredictResponse
from graft.serve.api.upload import UPLOAD_DOC, read_upload
from graft.serve.limits import Problem
from graft.serve.models import ModelHolder
from graft.serve.settings import ServeSettings

router = APIRouter()

_TOP_K_DOC = "how many classes to return, most likely first [default: 5]"


@router.post(
    "/predict",
    response_model=PredictResponse,
    response_model_by_alias=True,
    responses=ERRORS,
    openapi_extra=UPLOAD_DOC,
    summary="Classify one image",
)
async def predict(
    request: Request,
    holder: HolderDep,
    settings: SettingsDep,
    admission: AdmissionDep,
    decoder: DecoderDep,
    top_k: Annotated[int | None, Query(ge=1, description=_TOP_K_DOC)] = None,
) -> PredictResponse:
    """The image's most likely classes. Send it as multipart field `file` (what a browser form does) or as
    the raw request body (`curl --data-binary @photo.jpg`)."""
    started = time.perf_counter()
    with admission.admit():
        try:
            async with asyncio.timeout(settings.timeout_s):
                return await _classify(request, top_k, started, holder, settings, decoder)
        except TimeoutError:
            raise Problem(
                504, "timeout", f"the request took longer than {settings.timeout_s:g} s (--timeout)"
            ) from None


async def _classify(
    request: Request,
    top_k: int | None,
    started: float,
    holder: ModelHolder,
    settings: ServeSettings,
    decoder: ThreadPoolExecutor,
) -> PredictResponse:
    # The model is chosen on arrival: a reload meanwhile lets this request finish on the one it started with.
    # The batching ticket is taken before the upload is read, so the batcher waits for requests still uploading.
    with holder.use() as loaded, loaded.batcher.incoming() as ticket:
        data, form_top_k = await read_upload(request)
        decode_start = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            inputs = await loop.run_in_executor(decoder, _model_input, loaded.bundle, data, settings.image_limits)
        except ImageTooLarge as error:
            raise Problem(413, "image_too_large", str(error)) from None
        except GraftError as error:
            raise Problem(422, "not_an_image", str(error)) from None
        decoded = time.perf_counter()
        result = await loaded.batcher.submit(inputs, ticket)
        prediction = loaded.bundle.rank(result.logits, top_k or form_top_k or settings.top_k)[0]
    total = time.perf_counter() - started
    return PredictResponse(
        model=loaded.model_id,
        engine=loaded.engine_name,
        top=[
            ClassProbability(**{"class": c, "probability": p})
            for c, p in zip(prediction.classes, prediction.probabilities, strict=True)
        ],
        latency_ms=Latency(
            total=_ms(total),
            decode=_ms(decoded - decode_start),
            queue=_ms(result.queued_s),
            inference=_ms(result.inference_s),
            batch_size=result.batch_size,
        ),
    )


def _model_input(bundle: Bundle, data: bytes, limits: ImageLimits) -> torch.Tensor:
    return bundle.model_input(data, limits=limits, name="upload")


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)
