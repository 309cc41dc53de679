"""The HTTP API: FastAPI routes over a loaded bundle, with OpenAPI docs at /docs.

    POST /v1/predict   image as multipart field `file` or as the raw body; `?top_k=` → classes with probabilities
    GET  /v1/model     spec, classes, metrics, provenance, engine
    POST /v1/reload    load the bundle again (or `{"bundle": PATH}`) without dropping requests
    GET  /healthz      the process is up;  GET /readyz  a model is loaded and requests are accepted
    GET  /             the phone page

An upload is decoded and preprocessed by `Bundle.model_input` (the same code as `graft predict`) in a small
thread pool, batched with other requests, run by the engine, and ranked by `Bundle.rank`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any

from fastapi import Body, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, Field
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from graft._version import __version__
from graft.bundle import Bundle
from graft.data.images import ImageTooLarge
from graft.errors import GraftError
from graft.serve.limits import Admission, BodyLimit, Problem, check_token, is_loopback, problem_response
from graft.serve.models import ModelHolder, load_model, resolve
from graft.serve.page import PAGE_HEADERS, page_html
from graft.serve.settings import ServeSettings

log = logging.getLogger("graft.serve")

FILE_FIELD = "file"
_TOP_K_DOC = "how many classes to return, most likely first [default: 5]"


class ClassProbability(BaseModel):
    class_: str = Field(alias="class")
    probability: float


class Latency(BaseModel):
    """Milliseconds spent in each stage of this request on the server."""

    total: float
    decode: float = Field(description="decoding and preprocessing the upload")
    queue: float = Field(description="waiting for a batch")
    inference: float = Field(description="the engine's forward pass for the whole batch")
    batch_size: int = Field(description="requests that shared the forward pass")


class PredictResponse(BaseModel):
    model: str = Field(description="the loaded bundle: name and the first 12 hex of its weights' sha256")
    engine: str
    top: list[ClassProbability]
    latency_ms: Latency


class ErrorResponse(BaseModel):
    detail: str
    code: str


class ReloadRequest(BaseModel):
    bundle: str | None = Field(
        None,
        description="bundle directory to load (then a rounds project is no longer followed); default: the current "
        "one again, or the project's newest promoted one",
    )


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in {
        400: "empty upload or malformed multipart body",
        401: "token missing or wrong",
        413: "upload or image too large",
        422: "not a decodable image, wrong field or bad parameter",
        503: "overloaded (see Retry-After)",
        504: "request took longer than --timeout",
    }.items()
}

_UPLOAD_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        FILE_FIELD: {"type": "string", "format": "binary"},
                        "top_k": {"type": "integer", "minimum": 1},
                    },
                    "required": [FILE_FIELD],
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


def create_app(bundle: Bundle | str | Path, settings: ServeSettings | None = None, **overrides: Any) -> FastAPI:
    """The FastAPI app serving `bundle` (or a rounds project's promoted bundle, following new promotions);
    `settings` or keyword overrides (e.g. `max_batch=1`) set its limits.

    The bundle is loaded here, so a broken one fails before any server starts.
    """
    settings = dataclasses.replace(settings or ServeSettings(), **overrides).validate()
    source, project = resolve(bundle)
    holder = ModelHolder(load_model(source, settings), settings, project)
    admission = Admission(settings.max_queue)
    decoder = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="graft-decode")

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        watcher = None
        if holder.project is not None and settings.watch_s > 0:
            watcher = asyncio.get_running_loop().create_task(holder.watch(settings.watch_s))
        yield
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        await holder.close()
        decoder.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="graft serve",
        version=__version__,
        description="Image classification with a graft bundle. Send a photo, get its most likely classes.",
        lifespan=lifespan,
    )
    app.state.holder, app.state.settings, app.state.admission = holder, settings, admission
    app.add_middleware(BodyLimit, limit=settings.max_upload_bytes)
    _error_handlers(app)

    def authorise(request: Request) -> None:
        check_token(request.headers.get("authorization"), settings.token)

    @app.post(
        "/v1/predict",
        response_model=PredictResponse,
        response_model_by_alias=True,
        responses=_ERRORS,
        openapi_extra=_UPLOAD_DOC,
        summary="Classify one image",
    )
    async def predict(
        request: Request,
        top_k: Annotated[int | None, Query(ge=1, description=_TOP_K_DOC)] = None,
    ) -> PredictResponse:
        """The image's most likely classes. Send it as multipart field `file` (what a browser form does) or as
        the raw request body (`curl --data-binary @photo.jpg`)."""
        authorise(request)
        started = time.perf_counter()
        with admission.admit():
            try:
                async with asyncio.timeout(settings.timeout_s):
                    return await _predict(request, top_k, started)
            except TimeoutError:
                raise Problem(
                    504, "timeout", f"the request took longer than {settings.timeout_s:g} s (--timeout)"
                ) from None

    async def _predict(request: Request, top_k: int | None, started: float) -> PredictResponse:
        # The model is chosen on arrival: a reload meanwhile lets this request finish on the one it started with.
        with holder.use() as loaded, loaded.batcher.incoming() as ticket:
            data, form_top_k = await read_upload(request)
            decode_start = time.perf_counter()
            loop = asyncio.get_running_loop()
            try:
                inputs = await loop.run_in_executor(decoder, _model_input, loaded.bundle, data, settings.max_pixels)
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

    @app.get("/v1/model", summary="What is being served", responses={401: _ERRORS[401]})
    async def model_info(request: Request) -> dict[str, Any]:
        """Model id, engine, input spec, classes, metrics, provenance and the server's batching and limits."""
        authorise(request)
        loaded = holder.current
        meta = loaded.bundle.metadata()
        return {
            "model": loaded.model_id,
            "engine": loaded.engine_name,
            "engine_note": loaded.engine_note,
            "bundle": str(loaded.bundle.path) if loaded.bundle.path else None,
            "project": str(holder.project) if holder.project else None,
            "loaded_at": loaded.loaded_at,
            **{key: meta[key] for key in ("architecture", "input", "classes", "parameters", "metrics", "provenance")},
            "export": loaded.export,
            "batching": {"max_batch": settings.max_batch, "max_delay_ms": settings.max_delay_ms},
            "limits": {
                "max_upload_mb": settings.max_upload_mb,
                "max_pixels": settings.max_pixels,
                "max_queue": settings.max_queue,
                "timeout_s": settings.timeout_s,
                "token": settings.token is not None,
            },
        }

    @app.post("/v1/reload", summary="Load the bundle again", responses={401: _ERRORS[401], 422: _ERRORS[422]})
    async def reload(request: Request, body: Annotated[ReloadRequest | None, Body()] = None) -> dict[str, Any]:
        """Load the bundle again (a rounds project's newest promoted one) or another one; requests in flight finish
        on the model they started with. Needs the token; without a token set, only clients on this machine may
        reload."""
        authorise(request)
        if settings.token is None and not is_loopback(request.client.host if request.client else None):
            raise Problem(403, "forbidden", "reloading from another machine needs the server to run with --token")
        try:
            old, new = await holder.reload(body.bundle if body else None)
        except GraftError as error:
            raise Problem(422, "bad_bundle", f"{error}; still serving {holder.current.model_id}") from None
        return {"model": new.model_id, "engine": new.engine_name, "previous": old.model_id}

    @app.get("/healthz", summary="Liveness")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness", responses={503: {"model": ErrorResponse, "description": "shutting down"}})
    async def readyz() -> dict[str, Any]:
        """Ready while a model is loaded and the server is not shutting down (a reload keeps it ready)."""
        if holder.closing:
            raise Problem(503, "shutting_down", "the server is shutting down")
        loaded = holder.current
        return {"status": "ready", "model": loaded.model_id, "engine": loaded.engine_name}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(page_html(), headers=PAGE_HEADERS)

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        return Response(status_code=204)

    async def read_upload(request: Request) -> tuple[bytes, int | None]:
        """The uploaded image's bytes, from multipart field `file` or the raw body; and a form's top_k.

        Any other content type is taken as the image itself (curl's --data-binary says form-urlencoded), and
        decoding decides whether it is one.
        """
        body = await request.body()  # BodyLimit stops it at --max-upload-mb (413)
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        top_k = None
        if content_type == "multipart/form-data":
            form = await request.form(max_files=1, max_fields=8)
            upload = form.get(FILE_FIELD)
            if not isinstance(upload, UploadFile):
                fields = ", ".join(sorted(form.keys())) or "none"
                detail = f"send the image as a file in the multipart field '{FILE_FIELD}' (got: {fields})"
                raise Problem(422, "missing_file", detail)
            raw_k = form.get("top_k")
            if isinstance(raw_k, str) and raw_k:
                if not raw_k.isdigit() or int(raw_k) < 1:
                    raise Problem(422, "invalid_request", f"top_k must be a positive integer, got {raw_k!r}")
                top_k = int(raw_k)
            body = await upload.read()
        if not body:
            detail = f"empty upload: send an image as the body or as the multipart field '{FILE_FIELD}'"
            raise Problem(400, "empty_upload", detail)
        return body, top_k

    return app


def _model_input(bundle: Bundle, data: bytes, max_pixels: int):
    return bundle.model_input(data, max_pixels=max_pixels, name="upload")


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def _error_handlers(app: FastAPI) -> None:
    """Every error is `{"detail": one line, "code": ...}`; client mistakes never become a 500."""

    @app.exception_handler(Problem)
    async def problem(_: Request, error: Problem) -> Response:
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, error: RequestValidationError) -> Response:
        parts = []
        for issue in error.errors():
            if issue.get("type") == "json_invalid":
                parts.append("the request body is not valid JSON")
                continue
            where = ".".join(str(p) for p in issue.get("loc", ()) if p not in ("query", "body"))
            parts.append(f"{where}: {issue.get('msg')}" if where else str(issue.get("msg")))
        return problem_response(422, "invalid_request", "; ".join(parts) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, error: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "bad_request")
        return problem_response(error.status_code, code, str(error.detail), getattr(error, "headers", None))

    @app.exception_handler(Exception)
    async def crashed(_: Request, error: Exception) -> Response:
        log.exception("unexpected error")
        return problem_response(500, "internal_error", "internal server error (see the server log)")
