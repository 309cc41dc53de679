"""POST /v1/samples and GET /v1/samples: labelled photos from the phone into the served rounds project's inbox.

Teach mode and "wrong? it is …" both send multipart `label` + one or more `file`s; the photos are decoded with
the same limits as predict, re-encoded without metadata and stored by content hash (`graft.rounds.inbox`), where
`graft rounds add PROJECT NAME --inbox` makes a round of them. Only a server following a rounds project has an
inbox (409 otherwise). Storing changes the project, so it needs the token; without one set, only clients on this
machine may store (`require_local_or_token`, as for reload).

The request is admitted like predict's (bounded by --max-queue) and runs under --timeout: decoding runs in the
server's one samples thread (so teaching never delays predictions' decode pool) and stops at the timeout (504,
nothing saved). Once the photos are being committed (renames under
the inbox lock, milliseconds) the request finishes and answers, so a 504 always means nothing was saved.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request

from graft.data.image_limits import ImageTooLarge
from graft.errors import GraftError
from graft.rounds.inbox import (
    TEST_EVERY,
    ClassConflict,
    InboxFull,
    InvalidClassName,
    InvalidGroup,
    Stopped,
    counts,
    save_samples,
)
from graft.rounds.project import is_project
from graft.serve.api.auth import require_local_or_token
from graft.serve.api.deps import AdmissionDep, HolderDep, SamplerDep, SettingsDep
from graft.serve.api.schemas import errors
from graft.serve.api.upload import FILE_FIELD, GROUP_FIELD, LABEL_FIELD, read_labelled_uploads
from graft.serve.limits import Problem
from graft.serve.models import ModelHolder
from graft.serve.settings import ServeSettings

log = logging.getLogger("graft.serve")

router = APIRouter()

SAMPLES_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        LABEL_FIELD: {"type": "string", "description": "the class name (a folder name: no paths)"},
                        GROUP_FIELD: {
                            "type": "string",
                            "description": "optional burst or video id: all its photos go to one side (train/test)",
                        },
                        FILE_FIELD: {"type": "array", "items": {"type": "string", "format": "binary"}},
                    },
                    "required": [LABEL_FIELD, FILE_FIELD],
                }
            }
        },
    }
}


def _project(holder: ModelHolder) -> Path:
    """The rounds project being served, or 409: a plain bundle has no inbox to collect into."""
    project = holder.project
    if project is None or not is_project(project):
        raise Problem(
            409,
            "not_a_rounds_project",
            "this server serves a bundle, not a rounds project, so it has no inbox: start it with "
            "`graft serve PROJECT` to collect samples",
        )
    return project


def _limits(settings: ServeSettings) -> dict[str, Any]:
    inbox = settings.inbox_limits
    return {
        "max_files": settings.samples_max_files,
        "max_per_class": inbox.max_per_class,
        "max_total": inbox.max_total,
        "max_mb": settings.inbox_max_mb,
    }


@router.get("/samples", summary="Photos waiting in the inbox, per class", responses=errors(401, 409))
async def sample_counts(holder: HolderDep, settings: SettingsDep) -> dict[str, Any]:
    """Per class, how many photos wait in the served rounds project's inbox (train and held-out test)."""
    project = _project(holder)
    found = await asyncio.to_thread(counts, project)
    return {
        "project": str(project),
        "counts": found,
        "total": sum(c["train"] + c["test"] for c in found.values()),
        "test_share": 1 / TEST_EVERY,
        "limits": _limits(settings),
    }


@router.post(
    "/samples",
    summary="Save labelled photos in the inbox",
    responses=errors(400, 401, 403, 409, 413, 415, 422, 503, 504, 507),
    openapi_extra=SAMPLES_DOC,
    dependencies=[require_local_or_token],
)
async def add_samples(
    request: Request, holder: HolderDep, settings: SettingsDep, admission: AdmissionDep, sampler: SamplerDep
) -> dict[str, Any]:
    """Save photos of one class (multipart `label` and one or more `file`) in the served rounds project's inbox:
    all or nothing. Answers which were saved, which were duplicates (not saved again), which moved to this class
    from another ("wrong? it is …"), and the inbox's counts per class."""
    project = _project(holder)
    admission.enter()
    gate = CommitGate()
    job = None
    try:
        try:
            async with asyncio.timeout(settings.timeout_s):
                label, group, files = await read_labelled_uploads(request, settings.samples_max_files)
                job = sampler.submit(
                    save_samples,
                    project,
                    label,
                    files,
                    limits=settings.inbox_limits,
                    image_limits=settings.image_limits,
                    known_classes=list(holder.current.bundle.classes),
                    group=group,
                    stopped=gate.abandoned,
                    may_commit=gate.commit,
                )
                report = await asyncio.wrap_future(job)
        except TimeoutError:
            if job is None or gate.abandon():
                raise Problem(
                    504, "timeout", f"the request took longer than {settings.timeout_s:g} s (--timeout); nothing saved"
                ) from None
            report = await asyncio.wrap_future(job)  # already committing: its answer is the truth
    except (GraftError, OSError) as error:
        raise inbox_problem(error, project, stored="photos", unreadable="not_an_image") from None
    finally:
        gate.abandon()
        admission.release_after(job)
    return {"project": str(project), **report.to_dict(), "limits": _limits(settings)}


class CommitGate:
    """The line between "may still stop" and "is saving": decided once, under a lock, by whichever comes first,
    the request's timeout (`abandon`) or the decode thread reaching the commit (`commit`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = "running"

    def abandoned(self) -> bool:
        return self._state == "abandoned"

    def commit(self) -> bool:
        """Called by the worker before it renames anything: False when the request was abandoned."""
        with self._lock:
            if self._state == "abandoned":
                return False
            self._state = "committing"
            return True

    def abandon(self) -> bool:
        """Called by the request on timeout: False when the worker is already committing."""
        with self._lock:
            if self._state == "committing":
                return False
            self._state = "abandoned"
            return True


def inbox_problem(error: GraftError | OSError, project: Path, *, stored: str, unreadable: str) -> Problem:
    """The HTTP answer for a request whose `stored` things (photos, frames) did not reach the inbox: the client's
    mistakes are 4xx with the reason; the server's disk is a logged 507. Shared by photo and video uploads."""
    if isinstance(error, OSError):  # the server's disk, not the client: logged, and said plainly
        log.error("could not store %s in %s: %s", stored, project, error)
        detail = f"the server could not store the {stored} ({error.strerror or error}); nothing was saved"
        return Problem(507, "storage_error", detail)
    codes: list[tuple[type[GraftError], int, str]] = [
        (InvalidClassName, 422, "invalid_label"),
        (InvalidGroup, 422, "invalid_group"),
        (ClassConflict, 409, "class_conflict"),
        (ImageTooLarge, 413, "image_too_large"),
    ]
    for kind, status, code in codes:
        if isinstance(error, kind):
            return Problem(status, code, f"{error}; nothing was saved")
    if isinstance(error, InboxFull):
        return Problem(409, "inbox_full", str(error))
    if isinstance(error, Stopped):
        return Problem(504, "timeout", str(error))
    return Problem(422, unreadable, f"{error}; nothing was saved")
