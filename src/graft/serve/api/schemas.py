"""The JSON the API answers with, as Pydantic models: they validate responses and document them at /docs."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


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


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in {
        400: "empty upload or malformed multipart body",
        401: "token missing or wrong",
        403: "a change from another machine while the server has no token",
        409: "no inbox (not a rounds project), inbox full, or a class name clashing with another in case",
        413: "upload or image too large",
        415: "not multipart/form-data",
        422: "not a decodable image, wrong field or bad parameter",
        503: "overloaded (see Retry-After)",
        504: "request took longer than --timeout",
        507: "the server could not store the photos (its disk); nothing was saved",
    }.items()
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The documented error responses of one route, from `ERRORS`."""
    return {status: ERRORS[status] for status in statuses}
