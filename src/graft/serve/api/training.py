"""POST /v1/rounds and GET /v1/training: train the next round from the phone, and watch it train.

Progress is polled (GET /v1/training, about once a second) rather than streamed as server-sent events: the
browser's EventSource cannot send the `Authorization` header, so a stream would need the token in its URL (and in
every access log); polling answers from the project's files, so it works the same after a server restart or
while another process trains, and an epoch lasts seconds to minutes, so a second's delay shows nothing less.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Request
from pydantic import BaseModel, Field

from graft.errors import GraftError, first_line
from graft.serve.api.auth import require_local_or_token
from graft.serve.api.schemas import errors
from graft.serve.limits import Problem
from graft.serve.training import TrainingBusy, TrainingWorker

router = APIRouter()


class RoundRequest(BaseModel):
    name: str | None = Field(
        None, description="the new round's name (letters, digits, '.', '_', '-'); default: phone-<k>"
    )


def _worker(request: Request) -> TrainingWorker:
    worker = getattr(request.app.state, "training", None)
    if worker is None or request.app.state.holder.project is None:  # a plain bundle, or pinned to one by reload
        raise Problem(
            409,
            "not_a_rounds_project",
            "this server serves a bundle, not a rounds project: start it with `graft serve PROJECT` to train rounds",
        )
    return worker


@router.post(
    "/rounds",
    summary="Train the next round from the inbox",
    status_code=202,
    responses={**errors(401, 422), 409: {"description": "a round is training, or not serving a rounds project"}},
    dependencies=[require_local_or_token],
)
async def start_round(request: Request, body: Annotated[RoundRequest | None, Body()] = None) -> dict[str, Any]:
    """Turn the inbox into a new round and train it in the background (an unfinished round resumes instead);
    the gate decides, and a promoted round is served by itself. One training at a time: 409 while one runs."""
    worker = _worker(request)
    try:
        return await worker.start(body.name if body else None)
    except TrainingBusy as error:
        raise Problem(409, "training_busy", str(error)) from None
    except (GraftError, OSError) as error:
        raise Problem(422, "cannot_train", first_line(error)) from None


@router.get("/training", summary="Progress of the background training", responses=errors(401))
async def training(request: Request) -> dict[str, Any]:
    """State (idle, training, measuring, promoted, rejected, interrupted, failed), round, epoch of epochs, ETA,
    latest validation accuracy, the gate's decision when done, and the model being served."""
    worker = _worker(request)
    try:
        answer = worker.status()
    except GraftError as error:
        raise Problem(409, "damaged_state", first_line(error)) from None
    answer["serving"] = request.app.state.holder.current.model_id
    return answer
