"""A rounds project's inbox: labelled photos sent from a phone (`POST /v1/samples`), waiting to become a round.

    PROJECT/inbox/train/<class>/<sha256>.png    the `folder:` layout B, so the inbox is a data source as it is
    PROJECT/inbox/test/<class>/<sha256>.png     held out: the images whose sha256, as a number, is 0 mod 5 (1/5)
    PROJECT/inbox/.staging/, PROJECT/inbox/.lock   hidden, so the folder source ignores them

Each photo is decoded by `graft.data.images` (limits first, EXIF orientation applied), and its pixels are written
again as a PNG: no EXIF, GPS position or other metadata survives. It is named by the sha256 of those pixels (with
their shape), so the same photo sent twice, or with other metadata, is one file; the held-out share follows from
that name, so a photo always lands on the same side. A photo already in the inbox under another class is moved
to the new one ("wrong? it is …"); one already taken into a round is reported as a duplicate and not saved again.

A request is all or nothing: every photo is decoded and staged first; only when all are good and the inbox has
room are they renamed into place (each rename atomic), under the inbox lock, which `graft rounds add --inbox`
(`graft.rounds.intake`) also holds while it moves files out.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import shutil
import time
import unicodedata
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from graft.data.class_names import InvalidClassName, check_class_name
from graft.data.image_limits import DEFAULT_LIMITS, ImageLimits
from graft.data.images import decode_image
from graft.errors import GraftError
from graft.rounds.project import SAMPLES

INBOX = "inbox"
SPLITS = ("train", "test")
TEST_EVERY = 5  # an image goes to test/ when int(sha256, 16) % TEST_EVERY == 0: a fifth, decided by content
SUFFIX = ".png"
_STAGING = ".staging"
_LOCK = ".lock"
_STALE_STAGING_S = 3600  # a staging folder this old was left by a crash: removed by the next request


@dataclass(frozen=True)
class InboxLimits:
    """How much the inbox may hold; a request that would pass a bound is refused whole (`InboxFull`)."""

    max_per_class: int = 2000
    max_total: int = 20_000
    max_bytes: int = 4 * 2**30


class InboxFull(GraftError):
    """Saving the request's photos would pass one of the inbox's bounds; nothing was saved."""


class ClassConflict(GraftError):
    """A new class name that differs from an existing one only in case (one folder on macOS and Windows)."""


class Stopped(GraftError):
    """The caller gave up on the request (it timed out) before its photos were committed; nothing was saved."""


@dataclass
class SaveReport:
    """What one request did: saved, duplicates (not saved again), relabelled (moved to `label`), inbox counts."""

    label: str
    saved: list[dict] = field(default_factory=list)
    duplicates: list[dict] = field(default_factory=list)
    relabelled: list[dict] = field(default_factory=list)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "label": self.label,
            "saved": self.saved,
            "duplicates": self.duplicates,
            "relabelled": self.relabelled,
            "counts": self.counts,
            "total": sum(c["train"] + c["test"] for c in self.counts.values()),
        }


def inbox_dir(project: str | Path) -> Path:
    return Path(project) / INBOX


def split_of(sha256: str) -> str:
    """train or test, from the content hash alone (so a photo always lands on the same side)."""
    return "test" if int(sha256, 16) % TEST_EVERY == 0 else "train"


def group_split(label: str, group: str) -> str:
    """train or test for every photo of a group (a burst, a video) of class `label`: one side for all of them,
    so near-copies never sit on both sides of the held-out split."""
    return split_of(hashlib.sha256(f"{label}\0{group}".encode()).hexdigest())


_GROUP = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class InvalidGroup(GraftError):
    """A group name that is not 1 to 64 letters, digits, '.', '_' or '-'."""


def check_group(group: str | None) -> str | None:
    if group is not None and not _GROUP.match(group):
        shown = repr(group if len(group) <= 40 else group[:40] + "…")
        raise InvalidGroup(f"group {shown}: use 1 to 64 letters, digits, '.', '_' or '-' (e.g. burst-1730)")
    return group


def pixel_sha256(array: np.ndarray) -> str:
    """The sha256 of decoded pixels and their shape: the same picture gives the same name whatever its file said."""
    digest = hashlib.sha256(("x".join(str(n) for n in array.shape) + "\n").encode())
    digest.update(np.ascontiguousarray(array, dtype=np.uint8).tobytes())
    return digest.hexdigest()


def png_bytes(array: np.ndarray) -> bytes:
    """HxWxC uint8 pixels (C 1 or 3) as a PNG holding nothing but them."""
    image = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=6)
    return buffer.getvalue()


@dataclass(frozen=True)
class Entry:
    """One file in the inbox (or a round's samples folder)."""

    sha256: str
    split: str
    label: str
    path: Path
    size: int


def scan(root: Path) -> dict[str, Entry]:
    """Every `<split>/<class>/<sha256>.png` under `root` by hash; anything else (hidden, foreign) is ignored."""
    found: dict[str, Entry] = {}
    for split in SPLITS:
        base = root / split
        if not base.is_dir():
            continue
        for class_dir in sorted(base.iterdir()):
            if class_dir.name.startswith(".") or not class_dir.is_dir():
                continue
            with os.scandir(class_dir) as entries:
                for item in entries:
                    sha = item.name.removesuffix(SUFFIX)
                    if item.name.endswith(SUFFIX) and _is_sha(sha) and item.is_file(follow_symlinks=False):
                        found[sha] = Entry(sha, split, class_dir.name, Path(item.path), item.stat().st_size)
    return found


def counts(project: str | Path) -> dict[str, dict[str, int]]:
    """Images per class in the inbox: {class: {"train": n, "test": m}}, classes sorted."""
    return _counts(scan(inbox_dir(project)).values())


def _counts(entries: Iterator[Entry] | Sequence[Entry]) -> dict[str, dict[str, int]]:
    result: dict[str, dict[str, int]] = {}
    for entry in entries:
        result.setdefault(entry.label, {"train": 0, "test": 0})[entry.split] += 1
    return dict(sorted(result.items()))


def _labels(inbox: Path) -> list[str]:
    """The class folders in the inbox (both sides)."""
    return [
        d.name
        for split in SPLITS
        if (inbox / split).is_dir()
        for d in (inbox / split).iterdir()
        if d.is_dir() and not d.name.startswith(".")
    ]


def _is_sha(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


@contextlib.contextmanager
def inbox_lock(project: str | Path) -> Iterator[None]:
    """The inbox's own lock, held briefly (by the server while it commits a request, by `add_from_inbox` while it
    moves files): blocking, unlike the project lock, which `rounds train` holds for hours."""
    directory = inbox_dir(project)
    directory.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows: no cross-process lock (the server is one process)
        yield
        return
    with open(directory / _LOCK, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass
class _Staged:
    sha256: str
    path: Path
    size: int
    split: str = "train"


def save_samples(
    project: str | Path,
    label: str,
    uploads: Sequence[bytes],
    *,
    limits: InboxLimits = InboxLimits(),
    image_limits: ImageLimits = DEFAULT_LIMITS,
    known_classes: Sequence[str] = (),
    group: str | None = None,
    stopped: Callable[[], bool] = lambda: False,
    may_commit: Callable[[], bool] = lambda: True,
) -> SaveReport:
    """Save `uploads` (encoded images) under class `label` in the project's inbox; all or nothing.

    `label` is checked (graft.data.class_names); an inbox or `known_classes` class in another Unicode form is that
    class. `group` (a burst or video id) puts every photo of the request on one side, chosen from the class and
    group (`group_split`); without it each photo's side follows from its own hash. Raises InvalidClassName,
    InvalidGroup, ClassConflict (a name differing from an existing one only in case),
    GraftError / ImageTooLarge for an upload that does not decode (named "file N"), InboxFull, or Stopped when
    `stopped()` turns true while decoding or `may_commit()` is false at the end (the caller timed out).
    """
    project = Path(project)
    name = check_class_name(label)
    check_group(group)
    if not uploads:
        raise GraftError("no images: send one or more image files with the class name")
    inbox = inbox_dir(project)
    name = _resolve_class(name, set(_labels(inbox)) | set(known_classes))  # before any decoding or writing
    staging = inbox / _STAGING / uuid.uuid4().hex
    staging.mkdir(parents=True)
    try:
        _check_early(inbox, name, len(uploads), limits)
        staged = []
        for i, data in enumerate(uploads):
            if stopped():
                raise Stopped("the request was abandoned before its images were saved")
            item = _stage(staging, i, data, image_limits)
            item.split = group_split(name, group) if group is not None else split_of(item.sha256)
            staged.append(item)
        with inbox_lock(project):
            if not may_commit():
                raise Stopped("the request was abandoned before its images were saved")
            return _commit(project, name, staged, limits, known_classes)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        _remove_stale_staging(inbox / _STAGING)


def _stage(staging: Path, i: int, data: bytes, image_limits: ImageLimits) -> _Staged:
    if not data:
        raise GraftError(f"file {i + 1}: empty file")
    array = decode_image(data, limits=image_limits, name=f"file {i + 1}")
    encoded = png_bytes(array)
    path = staging / f"{i}{SUFFIX}"
    with open(path, "wb") as handle:
        handle.write(encoded)
        handle.flush()
        os.fsync(handle.fileno())
    return _Staged(pixel_sha256(array), path, len(encoded))


def _check_early(inbox: Path, name: str, incoming: int, limits: InboxLimits) -> None:
    """Refuse a request that cannot be saved whatever its photos are, before decoding any (a listing)."""
    present = scan(inbox)
    in_class = sum(1 for entry in present.values() if entry.label == name)
    if len(present) >= limits.max_total or in_class >= limits.max_per_class:
        _refuse_full(len(present), in_class, name, incoming, limits)


def _refuse_full(total: int, in_class: int, name: str, incoming: int, limits: InboxLimits) -> None:
    raise InboxFull(
        f"the inbox is full: {total} images ({in_class} of class {name!r}), {incoming} more would pass the limit of "
        f"{limits.max_total} in all or {limits.max_per_class} per class; make a round of it "
        "(graft rounds add PROJECT NAME --inbox)"
    )


def _commit(
    project: Path, name: str, staged: list[_Staged], limits: InboxLimits, known_classes: Sequence[str]
) -> SaveReport:
    inbox = inbox_dir(project)
    present = scan(inbox)
    name = _resolve_class(name, {entry.label for entry in present.values()} | set(known_classes))
    taken = _taken(project)
    report = SaveReport(label=name)
    new: list[_Staged] = []
    moves: list[Entry] = []
    seen: set[str] = set()
    for item in staged:
        sha = item.sha256
        if sha in seen:
            report.duplicates.append({"sha256": sha, "class": name, "where": "this request"})
        elif sha in present and present[sha].label == name:
            report.duplicates.append({"sha256": sha, "class": name, "where": "inbox"})
        elif sha in present:
            moves.append(present[sha])
        elif sha in taken:
            where, label = taken[sha]
            report.duplicates.append({"sha256": sha, "class": label, "where": where})
        else:
            new.append(item)
        seen.add(sha)

    in_class = sum(1 for entry in present.values() if entry.label == name)
    grown_class = in_class + len(new) + len(moves)
    size = sum(entry.size for entry in present.values()) + sum(item.size for item in new)
    if len(present) + len(new) > limits.max_total or grown_class > limits.max_per_class:
        _refuse_full(len(present), in_class, name, len(new) + len(moves), limits)
    if size > limits.max_bytes:
        raise InboxFull(
            f"the inbox is full: these images would bring it to {size / 2**20:.0f} MB, over its limit of "
            f"{limits.max_bytes / 2**20:.0f} MB; make a round of it (graft rounds add PROJECT NAME --inbox)"
        )

    renames = [(entry.path, inbox / entry.split / name / entry.path.name) for entry in moves]
    renames += [(item.path, inbox / item.split / name / f"{item.sha256}{SUFFIX}") for item in new]
    _rename_all(renames)
    for entry in moves:
        _remove_if_empty(entry.path.parent)
        report.relabelled.append({"sha256": entry.sha256, "from": entry.label, "split": entry.split})
    report.saved = [{"sha256": item.sha256, "split": item.split} for item in new]
    report.counts = counts(project)
    return report


def _rename_all(renames: list[tuple[Path, Path]]) -> None:
    """Each (source, target) renamed, or none: a failure (disk full, permissions) puts back those already done,
    so that a refused request has saved nothing; the OSError is raised again."""
    done: list[tuple[Path, Path]] = []
    made: list[Path] = []  # folders created here (class, and split), removed again if the request fails
    try:
        for source, target in renames:
            for folder in (target.parent.parent, target.parent):
                if not folder.is_dir():
                    folder.mkdir()
                    made.append(folder)
            os.replace(source, target)
            done.append((source, target))
    except OSError:
        for source, target in reversed(done):
            with contextlib.suppress(OSError):
                os.replace(target, source)
        for folder in reversed(made):
            _remove_if_empty(folder)
        raise


def _resolve_class(name: str, existing: set[str]) -> str:
    """`name` as the class it means: an existing class spelled in another Unicode form (a folder made on macOS
    holds NFD names) is that class, not a second one; a name differing from one only in case is refused."""
    if name in existing:
        return name
    for other in sorted(existing):
        if unicodedata.normalize("NFC", other) == name:
            return other
    for other in sorted(existing):
        if other.casefold() == name.casefold():
            raise ClassConflict(
                f"class {name!r} differs from the existing class {other!r} only in case; use {other!r} "
                "(or another name): both would be one folder on macOS and Windows"
            )
    return name


def _taken(project: Path) -> dict[str, tuple[str, str]]:
    """Images already taken into rounds: sha256 → ("round <name>", class)."""
    found: dict[str, tuple[str, str]] = {}
    base = project / SAMPLES
    if not base.is_dir():
        return found
    for folder in sorted(base.iterdir()):
        if folder.is_dir() and not folder.name.startswith("."):
            for sha, entry in scan(folder).items():
                found[sha] = (f"round {folder.name}", entry.label)
    return found


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()  # only succeeds when empty


def _remove_stale_staging(base: Path) -> None:
    """Staging folders left by a crash (older than an hour); a live request's own is never that old."""
    if not base.is_dir():
        return
    now = time.time()
    for folder in base.iterdir():
        with contextlib.suppress(OSError):
            if now - folder.stat().st_mtime > _STALE_STAGING_S:
                shutil.rmtree(folder, ignore_errors=True)


__all__ = [
    "INBOX",
    "SAMPLES",
    "TEST_EVERY",
    "ClassConflict",
    "InboxFull",
    "InboxLimits",
    "InvalidClassName",
    "InvalidGroup",
    "SaveReport",
    "Stopped",
    "check_group",
    "counts",
    "group_split",
    "inbox_dir",
    "inbox_lock",
    "save_samples",
    "split_of",
]
