"""POST /v1/samples/video: a short video of one class, its frames extracted on the server into the inbox.

A phone records a few seconds of an object more easily than it takes a dozen photos. The frames are extracted by
`graft.data.video.extract_frames`, the code behind `graft data frames` (upright as the phone shows them, every
1/FPS seconds, shorter side FRAME_SIZE pixels), and then saved exactly as photos sent to `POST /v1/samples` are
(`graft.rounds.inbox.save_samples`: content-hash names, duplicates dropped, all or nothing), as one `group`: the
frames of one video are near-copies, so they all go to the same side of the held-out split. The video itself is
never kept: it lives in a private temporary folder until its frames are read.

The video's header is checked before a frame is decoded: frame size within --max-pixels/--max-side, at most
MAX_SECONDS long. At most --samples-max-files frames are kept; the request runs under --timeout like the others.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import tempfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from rich.console import Console

from graft.data.class_names import check_class_name
from graft.data.image_limits import ImageLimits, ImageTooLarge
from graft.data.video import extract_frames, probe
from graft.errors import GraftError
from graft.rounds.inbox import (
    SaveReport,
    Stopped,
    check_group,
    save_samples,
)
from graft.serve.api.auth import require_local_or_token
from graft.serve.api.deps import AdmissionDep, HolderDep, SamplerDep, SettingsDep
from graft.serve.api.samples import CommitGate, _limits, _project, inbox_problem
from graft.serve.api.schemas import errors
from graft.serve.api.upload import read_labelled_uploads
from graft.serve.limits import Problem
from graft.serve.settings import ServeSettings

router = APIRouter()
log = logging.getLogger("graft.serve")

FPS = 5.0  # frames kept per second of video: a 3-second clip gives 15 photos, moving a little between each
FRAME_SIZE = 512  # shorter side of each kept frame, in pixels: larger than any model graft trains from a phone
MAX_SECONDS = 60.0  # a teaching clip is a few seconds; longer ones are refused before decoding


class TooLong(GraftError):
    """A video longer than MAX_SECONDS."""


def video_samples(
    project: Path,
    label: str,
    data: bytes,
    settings: ServeSettings,
    known_classes: list[str],
    gate: CommitGate,
    group: str | None = None,
) -> tuple[SaveReport, int]:
    """Extract the video's frames and save them as samples; (report, frames). Blocking: it runs in the samples
    thread, apart from predict's decode pool."""
    name = check_class_name(label)  # before any decoding: a bad name costs nothing
    # A video's frames are near-copies of each other: all on one side of the held-out split, or the test split
    # would measure frames the model trained on next to them (the client may name the group itself).
    group = check_group(group) or f"video-{hashlib.sha256(data).hexdigest()[:16]}"
    with tempfile.TemporaryDirectory(prefix="graft-video-") as scratch:
        video = Path(scratch) / "upload"
        video.write_bytes(data)
        try:
            _check_header(video, settings.image_limits)
            if gate.abandoned():
                raise Stopped("the request was abandoned before its frames were saved")
            result = extract_frames(
                video,
                label="frames",
                out=Path(scratch) / "out",
                fps=FPS,
                size=FRAME_SIZE,
                limit=settings.samples_max_files,
                console=Console(file=io.StringIO(), quiet=True),
            )
        except (ImageTooLarge, TooLong, Stopped):
            raise
        except GraftError as error:  # it names the scratch file; the client only needs to hear "the video"
            raise GraftError(str(error).replace(str(video), "the video")) from None
        frames = [path.read_bytes() for path in sorted(result.folder.glob("*.png"))]
    if not frames:
        raise GraftError("the video gave no frames")
    report = save_samples(
        project,
        name,
        frames,
        limits=settings.inbox_limits,
        image_limits=settings.image_limits,
        known_classes=known_classes,
        group=group,
        stopped=gate.abandoned,
        may_commit=gate.commit,
    )
    return report, len(frames)


def _check_header(video: Path, limits: ImageLimits) -> None:
    facts = probe(video)
    limits.check(facts.width, facts.height, "the video")
    if facts.seconds is not None and facts.seconds > MAX_SECONDS:
        raise TooLong(f"the video lasts {facts.seconds:.0f} s; send a clip of at most {MAX_SECONDS:g} s")


@router.post(
    "/samples/video",
    summary="Save a video's frames in the inbox",
    responses=errors(400, 401, 403, 409, 413, 415, 422, 503, 504),
    dependencies=[require_local_or_token],
)
async def add_video(
    request: Request, holder: HolderDep, settings: SettingsDep, admission: AdmissionDep, sampler: SamplerDep
) -> dict[str, Any]:
    """A short video of one class (multipart `label` and one `file`): its frames, FPS a second, are saved in the
    served rounds project's inbox as photos are (all or nothing). Answers as POST /v1/samples, plus `frames`."""
    project = _project(holder)
    admission.enter()
    gate = CommitGate()
    job = None
    try:
        try:
            async with asyncio.timeout(settings.timeout_s):
                label, group, files = await read_labelled_uploads(request, 1)
                known = list(holder.current.bundle.classes)
                job = sampler.submit(video_samples, project, label, files[0], settings, known, gate, group)
                report, frames = await asyncio.wrap_future(job)
        except TimeoutError:
            if job is None or gate.abandon():
                detail = f"the request took longer than {settings.timeout_s:g} s (--timeout); nothing saved"
                raise Problem(504, "timeout", detail) from None
            report, frames = await asyncio.wrap_future(job)  # already committing: its answer is the truth
    except TooLong as error:
        raise Problem(413, "video_too_long", f"{error}; nothing was saved") from None
    except (GraftError, OSError) as error:
        raise inbox_problem(error, project, stored="frames", unreadable="not_a_video") from None
    finally:
        gate.abandon()
        admission.release_after(job)
    return {"project": str(project), **report.to_dict(), "frames": frames, "limits": _limits(settings)}
