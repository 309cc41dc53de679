"""GET /healthz and /readyz: for load balancers and process supervisors, so they need no token."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from graft.serve.api.deps import HolderDep
from graft.serve.api.schemas import ErrorResponse
from graft.serve.limits import Problem

router = APIRouter()


@router.get("/healthz", summary="Liveness")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness", responses={503: {"model": ErrorResponse, "description": "shutting down"}})
async def readyz(holder: HolderDep) -> dict[str, Any]:
    """Ready while a model is loaded and the server is not shutting down (a reload keeps it ready)."""
    if holder.closing:
        raise Problem(503, "shutting_down", "the server is shutting down")
    loaded = holder.current
    return {"status": "ready", "model": loaded.model_id, "engine": loaded.engine_name}
