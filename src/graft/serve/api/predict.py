"""POST /v1/predict: one image in, its most likely classes out.

The request is admitted (bounded queue), then runs under --timeout: the upload is read, decoded and
preprocessed by `Bundle.model_input` (the same code as `graft predict`) in the decode thread pool, batched with
other requests, run by the engine, and ranked by `Bundle.rank`. At the timeout the client gets 504 and the
work stops too: a decode not yet started never starts, one running skips preprocessing, the batcher skips the
request, and the request's admission place is freed only once its decode thread has returned.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Annotated

import torch
from fastapi import APIRouter, Query, Request

from graft.bundle import Bundle
from graft.data import images
from graft.data.image_limits import ImageLimits, ImageTooLarge
from graft.errors import GraftError
from graft.serve.api.deps import AdmissionDep, DecoderDep, HolderDep, SettingsDep
from graft.serve.api.schemas import ERRORS, ClassProbability, Latency, PredictResponse
from graft.serve.api.upload import UPLOAD_DOC, read_upload
from graft.serve.limits import Problem
from graft.serve.models import ModelHolder
from graft.serve.settings import RANGES, ServeSettings

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
    top_k: Annotated[int | None, Query(ge=1, le=int(RANGES["top_k"].high), description=_TOP_K_DOC)] = None,
) -> PredictResponse:
    """The image's most likely classes. Send it as multipart field `file` (what a browser form does) or as
    the raw request body (`curl --data-binary @photo.jpg`)."""
    started = time.perf_counter()
    admission.enter()
    work = Work()
    try:
        async with asyncio.timeout(settings.timeout_s):
            return await _classify(request, top_k, started, holder, settings, decoder, work)
    except TimeoutError:
        raise Problem(504, "timeout", f"the request took longer than {settings.timeout_s:g} s (--timeout)") from None
    finally:
        work.stop.set()  # a decode still running skips preprocessing; the batcher skips this request
        admission.release_after(work.running)  # the place stays taken until that thread has returned


class Stopped(Exception):
    """Raised in the decode thread when its request already ended (timed out, or the client left)."""


@dataclass
class Work:
    """A request's work in the decode pool: whether to stop, and the thread job that may still be running."""

    stop: threading.Event = field(default_factory=threading.Event)
    running: concurrent.futures.Future | None = None

    async def prepare(
        self, decoder: ThreadPoolExecutor, bundle: Bundle, data: bytes, limits: ImageLimits
    ) -> torch.Tensor:
        """The upload as model input, decoded and preprocessed in the pool (a job not yet started is cancelled
        with the request; a running one stops before its next stage)."""
        self.running = decoder.submit(_model_input, bundle, data, limits, self.stop)
        return await asyncio.wrap_future(self.running)


async def _classify(
    request: Request,
    top_k: int | None,
    started: float,
    holder: ModelHolder,
    settings: ServeSettings,
    decoder: ThreadPoolExecutor,
    work: Work,
) -> PredictResponse:
    # The model is chosen on arrival: a reload meanwhile lets this request finish on the one it started with.
    # The batching ticket is taken before the upload is read, so the batcher waits for requests still uploading.
    with holder.use() as loaded, loaded.batcher.incoming() as ticket:
        data, form_top_k = await read_upload(request)
        decode_start = time.perf_counter()
        try:
            inputs = await work.prepare(decoder, loaded.bundle, data, settings.image_limits)
        except ImageTooLarge as error:
            raise Problem(413, "image_too_large", str(error)) from None
        except GraftError as error:
            raise Problem(422, "not_an_image", str(error)) from None
        decoded = time.perf_counter()
        result = await loaded.batcher.submit(inputs, ticket)
        try:
            prediction = loaded.bundle.rank(result.logits, top_k or form_top_k or settings.top_k)[0]
        except GraftError as error:  # non-finite scores for this image: no answer, and not a server crash
            raise Problem(422, "no_prediction", str(error)) from None
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


def _model_input(bundle: Bundle, data: bytes, limits: ImageLimits, stop: threading.Event) -> torch.Tensor:
    """Decode, then preprocess with the bundle's own `model_input` (as `graft predict` does), checking between
    the stages that the request still wants the result."""
    if stop.is_set():
        raise Stopped
    array = images.decode_image(data, limits=limits, name="upload")
    if stop.is_set():
        raise Stopped
    return bundle.model_input(array)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)
