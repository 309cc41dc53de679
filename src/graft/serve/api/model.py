"""GET /v1/model and POST /v1/reload: what is served, and replacing it without dropping requests."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Body

from graft.errors import GraftError, first_line
from graft.record import DEFAULT_CONFIDENCE
from graft.serve.api.auth import require_local_or_token
from graft.serve.api.deps import HolderDep, SettingsDep
from graft.serve.api.schemas import ReloadRequest, errors
from graft.serve.limits import Problem
from graft.serve.models import NotReloadable, reload_target

log = logging.getLogger("graft.serve")

router = APIRouter()

_META = ("architecture", "input", "classes", "parameters", "metrics", "provenance")


@router.get("/model", summary="What is being served", responses=errors(401))
async def model_info(holder: HolderDep, settings: SettingsDep) -> dict[str, Any]:
    """Model id, engine, input spec, classes, metrics, provenance, the server's batching and limits, and what a
    client needs to present an answer honestly: `test_accuracy` (null when none was measured) and `confidence`
    (below `confidence.threshold` the top class is "not sure"; the bundle's calibrated one, else the default)."""
    loaded = holder.current
    meta = loaded.meta  # validated and counted once, when the bundle was loaded
    metrics = meta.get("metrics") or {}
    return {
        "model": loaded.model_id,
        "engine": loaded.engine_name,
        "engine_note": loaded.engine_note,
        "bundle": str(loaded.bundle.path) if loaded.bundle.path else None,
        "project": str(holder.project) if holder.project else None,
        "loaded_at": loaded.loaded_at,
        **{key: meta[key] for key in _META},
        "test_accuracy": metrics.get("test_acc"),
        "confidence": meta.get("confidence") or DEFAULT_CONFIDENCE.model_dump(mode="json"),
        "export": loaded.export,
        "batching": {"max_batch": settings.max_batch, "max_delay_ms": settings.max_delay_ms},
        "limits": {
            "max_upload_mb": settings.max_upload_mb,
            "max_pixels": settings.max_pixels,
            "max_side": settings.max_side,
            "max_queue": settings.max_queue,
            "timeout_s": settings.timeout_s,
            "token": settings.token is not None,
        },
    }


@router.post(
    "/reload",
    summary="Load the bundle again",
    responses=errors(401, 422),
    dependencies=[require_local_or_token],
)
async def reload(holder: HolderDep, body: Annotated[ReloadRequest | None, Body()] = None) -> dict[str, Any]:
    """Load the bundle again (a rounds project's newest promoted one) or another one under the reload root;
    requests in flight finish on the model they started with. Needs the token; without a token set, only
    clients on this machine may reload."""
    try:
        target = reload_target(holder.reload_root, body.bundle) if body and body.bundle is not None else None
        old, new = await holder.reload(target)
    except NotReloadable as error:
        raise Problem(422, "bad_bundle", f"{error}; still serving {holder.current.model_id}") from None
    except (GraftError, OSError) as error:
        log.error("reload failed, still serving %s: %s", holder.current.model_id, first_line(error))
        raise Problem(422, "bad_bundle", f"{first_line(error)}; still serving {holder.current.model_id}") from None
    return {"model": new.model_id, "engine": new.engine_name, "previous": old.model_id}
