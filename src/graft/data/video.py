"""Frames from phone videos into a class folder, so a few short clips become a `folder:` data set.

`extract_frames` decodes MP4, MOV, WebM (anything the FFmpeg bundled with PyAV reads) and writes every Nth frame,
or F frames per second, as PNG files named `<video stem>-f<frame index>.png` into `OUT/<label>/`. The rules:

- Frames come out upright as a phone shows them: the display matrix a phone stores with a portrait video is
  applied the way the `ffmpeg` program applies it (rotations by multiples of 90° and mirror flips).
- `size` without `crop`: the shorter side becomes `size` pixels and the aspect ratio is kept, so nothing is
  distorted or thrown away on disk; training later stretches or crops to its own square (`--resize`).
  `crop="center"`: the largest centred square, resized to `size`×`size` (what the camera was pointed at).
- Each video is all or nothing: frames go to a hidden temp folder first and are moved into place only after the
  whole video decoded cleanly. A missing, empty, truncated or damaged file, a file that is no video and a video
  without a video stream are each one `GraftError` line naming the file.
- Existing frames of a video with the same stem are never silently mixed with new ones: the call is refused
  unless `overwrite=True`, which first deletes that stem's old frames (and nothing else).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import av.logging
import numpy as np
from PIL import Image
from rich.console import Console

from graft.errors import GraftError, first_line
from graft.progress import batch_progress

CROPS: tuple[str, ...] = ("none", "center")
_RESERVED_LABELS = ("train", "test")  # a class folder with these names would be read as a split by `folder:`
_IMAGE_FORMATS = ("image2", "gif", "webp_pipe", "apng")  # FFmpeg demuxers for still images (plus *_pipe)
# FFmpeg error lines that mean the file ends before its video does (a cut-off download or copy). Other error lines
# (decoders concealing a damaged packet) keep the frames and are reported as notes.
_TRUNCATION_WORDS = ("prematurely", "truncat", "partial file", "end of file")


@dataclass(frozen=True)
class VideoFrames:
    """What one video gave: frames written and skipped, the stored size and the rotation applied."""

    video: Path
    written: int
    skipped: int
    width: int  # as stored in the file, before rotation
    height: int
    rotation: int  # degrees counter-clockwise applied to make frames upright (0, 90, 180, 270)
    flipped: bool  # a mirror flip was applied as well
    files: tuple[Path, ...]
    notes: tuple[str, ...] = ()  # FFmpeg's error lines for a video that still decoded (concealed damage)


@dataclass(frozen=True)
class FramesResult:
    """Frames written into one class folder, per video."""

    folder: Path
    videos: tuple[VideoFrames, ...]

    @property
    def written(self) -> int:
        return sum(v.written for v in self.videos)

    @property
    def skipped(self) -> int:
        return sum(v.skipped for v in self.videos)


def extract_frames(
    video: str | Path | Sequence[str | Path],
    *,
    label: str,
    out: str | Path,
    every: int | None = None,
    fps: float | None = None,
    size: int | None = None,
    crop: str = "none",
    limit: int | None = None,
    overwrite: bool = False,
    console: Console | None = None,
) -> FramesResult:
    """Write frames of one or more videos into `out/label/` as PNG; see the module docstring for the rules.

    `every`: keep frames 0, N, 2N, … (default 1: all). `fps`: keep about F frames per second of video time
    instead (for clips recorded at different frame rates). `limit`: at most this many frames per video. Every
    video is opened and checked before any frame is written, so a typo in the last name costs nothing.
    """
    videos = [Path(video)] if isinstance(video, str | Path) else [Path(v) for v in video]
    if not videos:
        raise GraftError("no video given")
    selector = _selector(every, fps)
    crop = _check_options(size, crop, limit)
    folder = Path(out).expanduser() / _check_label(label)
    stems = [_stem(v) for v in videos]
    twins = sorted({s for s in stems if stems.count(s) > 1})
    if twins:
        raise GraftError(f"two videos have the name {twins[0]!r}; their frames would collide in {folder}: rename one")
    for path in videos:
        with _open(path):
            pass
    for stem in stems:
        old = _frames_of(folder, stem)
        if old and not overwrite:
            raise GraftError(
                f"{folder} already has {len(old)} frames of {stem!r} ({old[0].name}, …); "
                "use --force to replace them, or rename the video"
            )
    results = [
        _extract_one(path, stem, folder, selector(), size, crop, limit, console)
        for path, stem in zip(videos, stems, strict=True)
    ]
    return FramesResult(folder=folder, videos=tuple(results))


@dataclass(frozen=True)
class VideoFacts:
    """What a video's header says, read before any frame is decoded."""

    width: int
    height: int
    seconds: float | None  # None when the container does not say


def probe(path: str | Path) -> VideoFacts:
    """The first video stream's frame size and the video's duration, from the header only: a server checks an
    uploaded video against its limits (pixels, length) before spending time decoding it."""
    with _open(Path(path)) as (container, stream):
        width, height = int(stream.codec_context.width or 0), int(stream.codec_context.height or 0)
        if stream.duration is not None and stream.time_base is not None:
            seconds: float | None = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            seconds = container.duration / 1_000_000  # FFmpeg's AV_TIME_BASE
        else:
            seconds = None
    return VideoFacts(width, height, seconds)


def _check_options(size: int | None, crop: str, limit: int | None) -> str:
    if size is not None and size < 1:
        raise GraftError(f"--size must be at least 1 pixel, got {size}")
    if limit is not None and limit < 1:
        raise GraftError(f"--limit must be at least 1, got {limit}")
    crop = "center" if crop == "centre" else crop
    if crop not in CROPS:
        raise GraftError(f"unknown crop {crop!r}; choose {' or '.join(CROPS)}")
    return crop


def _check_label(label: str) -> str:
    """The label as a folder name: refused when `folder:` would not read it back as one class."""
    if not label.strip() or label != label.strip():
        raise GraftError(f"--label {label!r}: give a class name without leading or trailing spaces")
    if "/" in label or "\\" in label or label.startswith("."):
        raise GraftError(f"--label {label!r}: a class name cannot contain slashes or start with '.'")
    if label in _RESERVED_LABELS:
        raise GraftError(f"--label {label!r} is reserved: folder data reads {label}/ as a split, not a class")
    return label


def _stem(video: Path) -> str:
    """The file-name prefix for a video's frames; a leading '.' would hide them from `folder:`."""
    return video.stem.lstrip(".") or "video"


def _frames_of(folder: Path, stem: str) -> list[Path]:
    """Frames an earlier extraction of a video with this stem wrote (exactly `<stem>-f<digits>.png`)."""
    if not folder.is_dir():
        return []
    pattern = re.compile(re.escape(stem) + r"-f\d+\.png")
    return sorted(p for p in folder.iterdir() if pattern.fullmatch(p.name))


def _selector(every: int | None, fps: float | None) -> Callable[[], Callable[[int, float], bool]]:
    """Checks `every` / `fps` (not both) and gives a factory of fresh per-video predicates
    (frame index, time in seconds) → keep."""
    if every is not None and fps is not None:
        raise GraftError("give --every or --fps, not both")
    if fps is not None:
        if not (math.isfinite(fps) and fps > 0):
            raise GraftError(f"--fps must be a positive number, got {fps}")
        return lambda: _fps_selector(fps)
    step = 1 if every is None else every
    if step < 1:
        raise GraftError(f"--every must be at least 1, got {step}")
    return lambda: lambda index, _time: index % step == 0


def _fps_selector(fps: float) -> Callable[[int, float], bool]:
    """Keep the first frame at or after each tick of a 1/fps grid that starts at the first frame's time."""
    due: float | None = None

    def keep(_index: int, time: float) -> bool:
        nonlocal due
        due = time if due is None else due
        if time + 1e-6 < due:
            return False
        due += (math.floor((time + 1e-6 - due) * fps) + 1) / fps  # the next tick after this frame
        return True

    return keep


@contextlib.contextmanager
def _open(path: Path) -> Iterator[tuple[av.container.InputContainer, av.video.stream.VideoStream]]:
    """The container and its first video stream, or a one-line GraftError saying why there is none."""
    if not path.exists():
        raise GraftError(f"{path}: no such file")
    if path.is_dir():
        raise GraftError(f"{path}: is a directory, not a video file")
    if path.stat().st_size == 0:
        raise GraftError(f"{path}: empty file, not a video")
    with _ffmpeg_errors() as logs:
        try:
            container = av.open(str(path), mode="r")
        except av.error.FFmpegError as error:
            raise GraftError(f"{path}: not a readable video ({_reason(error, logs)})") from None
    with container:
        format_name = container.format.name
        if format_name in _IMAGE_FORMATS or format_name.endswith("_pipe"):
            raise GraftError(f"{path}: is a still image ({format_name}), not a video")
        if not container.streams.video:
            found = ", ".join(sorted({s.type for s in container.streams})) or "none"
            raise GraftError(f"{path}: has no video stream (streams found: {found}); is it truncated or audio only?")
        yield container, container.streams.video[0]


@contextlib.contextmanager
def _ffmpeg_errors() -> Iterator[list[tuple[int, str, str]]]:
    """FFmpeg's error-level log lines while the block runs (a truncated WebM is only reported there)."""
    previous = av.logging.get_level()
    av.logging.set_level(av.logging.ERROR)
    try:
        with av.logging.Capture(local=False) as logs:  # decoder threads log too
            yield logs
    finally:
        av.logging.set_level(previous)


def _reason(error: Exception, logs: Sequence[tuple[int, str, str]]) -> str:
    """FFmpeg's own words: the error's text without the file name, plus its last error log line."""
    text = getattr(error, "strerror", None) or first_line(error)
    detail = _last_error(logs)
    return f"{text.rstrip('.')}: {detail}" if detail and detail.lower() not in text.lower() else text


def _last_error(logs: Sequence[tuple[int, str, str]]) -> str:
    errors = _error_lines(logs)
    return errors[-1] if errors else ""


def _error_lines(logs: Sequence[tuple[int, str, str]]) -> list[str]:
    return [message.strip() for level, _name, message in logs if level <= av.logging.ERROR and message.strip()]


def _extract_one(
    path: Path,
    stem: str,
    folder: Path,
    select: Callable[[int, float], bool],
    size: int | None,
    crop: str,
    limit: int | None,
    console: Console | None,
) -> VideoFrames:
    """Decode one video into a hidden temp folder inside the class folder; once it decoded cleanly, delete the
    stem's old frames (overwrite was checked by the caller) and move the new ones into place."""
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{stem}.", suffix=".frames.tmp", dir=folder))
    try:
        names, decoded, orientation, stored, notes = _decode_into(tmp, path, stem, select, size, crop, limit, console)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if created:  # an empty class folder would make `folder:` fail later
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    for stale in _frames_of(folder, stem):  # only once the new frames are all there
        stale.unlink()
    files = []
    for name in names:
        os.replace(tmp / name, folder / name)
        files.append(folder / name)
    shutil.rmtree(tmp, ignore_errors=True)
    rotation, flipped = orientation
    return VideoFrames(path, len(files), decoded - len(files), *stored, rotation, flipped, tuple(files), notes)


def _decode_into(
    tmp: Path,
    path: Path,
    stem: str,
    select: Callable[[int, float], bool],
    size: int | None,
    crop: str,
    limit: int | None,
    console: Console | None,
) -> tuple[list[str], int, tuple[int, bool], tuple[int, int], tuple[str, ...]]:
    """(file names written to `tmp`, frames decoded, (rotation, flipped) of the last kept frame, stored size,
    FFmpeg's error lines)."""
    names: list[str] = []
    decoded = 0
    orientation = (0, False)
    with _open(path) as (container, stream), _ffmpeg_errors() as logs:
        stream.thread_type = "AUTO"  # frame threads: decoding is most of the work
        rate = float(stream.average_rate or stream.guessed_rate or 30)
        stored = (stream.codec_context.width, stream.codec_context.height)
        with batch_progress(console) as progress:
            task = progress.add_task(path.name, total=stream.frames or None, stats="")
            try:
                for frame in container.decode(stream):
                    index = decoded
                    decoded += 1
                    progress.advance(task)
                    time = frame.time if frame.time is not None else index / rate
                    if not select(index, time):
                        continue
                    matrix = _display_matrix(frame)
                    orientation = orientation_of(matrix)
                    pixels = resize_frame(upright(frame.to_ndarray(format="rgb24"), matrix), size, crop)
                    name = f"{stem}-f{index:06d}.png"
                    Image.fromarray(pixels).save(tmp / name, format="PNG", compress_level=1)
                    names.append(name)
                    if limit is not None and len(names) >= limit:
                        break
            except av.error.FFmpegError as error:
                raise GraftError(
                    f"{path}: video is damaged after {decoded} frames ({_reason(error, logs)}); nothing was written"
                ) from None
        notes = _error_lines(logs)
    truncated = [line for line in notes if any(word in line.lower() for word in _TRUNCATION_WORDS)]
    if truncated:
        raise GraftError(f"{path}: video is truncated ({truncated[-1]}) after {decoded} frames; nothing was written")
    if decoded == 0:
        raise GraftError(f"{path}: no frame could be decoded (damaged or truncated file?)")
    return names, decoded, orientation, stored, tuple(dict.fromkeys(notes))


def _display_matrix(frame: av.VideoFrame) -> np.ndarray | None:
    """The frame's 3×3 display matrix (FFmpeg's 16.16 fixed point, row-major) or None when it has none."""
    data = frame.side_data.get("DISPLAYMATRIX")
    if data is None:
        return None
    raw = bytes(data)
    return np.frombuffer(raw, dtype=np.int32).copy() if len(raw) == 36 else None


def _rotation_degrees(matrix: np.ndarray) -> int:
    """The clockwise angle the `ffmpeg` program reads from a display matrix, in [0, 360), nearest degree."""
    m = matrix.astype(np.float64)
    scale0, scale1 = math.hypot(m[0], m[3]), math.hypot(m[1], m[4])
    if scale0 == 0 or scale1 == 0:
        return 0
    theta = round(math.degrees(math.atan2(m[1] / scale1, m[0] / scale0)))
    return theta % 360


def _quarter_turn(matrix: np.ndarray) -> int:
    """The clockwise angle rounded to the nearest quarter turn: 0, 90, 180 or 270."""
    return round(_rotation_degrees(matrix) / 90) * 90 % 360


def upright(image: np.ndarray, matrix: np.ndarray | None) -> np.ndarray:
    """The image as a player shows it, by the rules of the `ffmpeg` program's autorotation.

    Rotations by multiples of 90° and the mirror flips that go with them; other angles (never written by
    phones) are rounded to the nearest quarter turn.
    """
    if matrix is None:
        return image
    theta = _quarter_turn(matrix)
    if theta == 90:  # ffmpeg: transpose=cclock_flip when matrix[3] > 0, else transpose=clock
        return np.ascontiguousarray(image.transpose(1, 0, 2) if matrix[3] > 0 else np.rot90(image, -1))
    if theta == 180:
        image = image[:, ::-1] if matrix[0] < 0 else image
        return np.ascontiguousarray(image[::-1] if matrix[4] < 0 else image)
    if theta == 270:  # transpose=clock_flip when matrix[3] < 0, else transpose=cclock
        return np.ascontiguousarray(np.rot90(image, -1)[::-1] if matrix[3] < 0 else np.rot90(image, 1))
    return np.ascontiguousarray(image[::-1]) if matrix[4] < 0 else image


def orientation_of(matrix: np.ndarray | None) -> tuple[int, bool]:
    """(counter-clockwise quarter-turn angle, mirrored) that `upright` applies, for reports."""
    if matrix is None:
        return 0, False
    mirrored = int(matrix[0]) * int(matrix[4]) - int(matrix[1]) * int(matrix[3]) < 0
    clockwise = _quarter_turn(matrix)
    return (360 - clockwise) % 360, mirrored


def resize_frame(image: np.ndarray, size: int | None, crop: str = "none") -> np.ndarray:
    """Centre-crop to a square (crop="center"), then scale so the shorter side is `size` (None: keep size)."""
    if crop == "center":
        height, width = image.shape[:2]
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        image = image[top : top + side, left : left + side]
    if size is None:
        return np.ascontiguousarray(image)
    height, width = image.shape[:2]
    scale = size / min(height, width)
    target = (max(1, round(width * scale)), max(1, round(height * scale)))
    if target == (width, height):
        return np.ascontiguousarray(image)
    resized = Image.fromarray(np.ascontiguousarray(image)).resize(target, Image.Resampling.BILINEAR, reducing_gap=3.0)
    return np.asarray(resized)
