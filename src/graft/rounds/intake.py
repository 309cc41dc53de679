"""A round from the inbox: `graft rounds add PROJECT NAME --inbox` and `graft.rounds.add_from_inbox`.

The inbox's photos (graft.rounds.inbox) move, one atomic rename each, to `PROJECT/samples/NAME/`, a `folder:`
source in layout B, and a pending round naming that folder is recorded; photos that arrive meanwhile stay in the
inbox. The round continues the previous round's bundle like any other; when its classes differ (new classes
taught on the phone), `graft train --weights` matches the classifier rows by class name and imprints the new
ones (graft.surgery.classes), so no separate class change is needed.

Order, for crashes: the photos move first, then the manifest names their folder. A crash between the two leaves
a samples folder no round names; the next `add_from_inbox` moves its photos back into the inbox first.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from graft.data.sources import check_source
from graft.errors import GraftError
from graft.rounds import project
from graft.rounds.inbox import Entry, inbox_dir, inbox_lock, scan

MIN_CLASSES = 2  # a folder: source needs two class folders


def add_from_inbox(
    directory: str | Path,
    name: str,
    *,
    replay: float | None = None,
    naive: bool = False,
    settings: dict | None = None,
) -> dict:
    """Make the inbox's photos the data of a new pending round `name` (modes and settings as `graft.rounds.add`).

    Returns {"round", "index", "data", "taken": {class: {"train", "test"}}, "moved_to_train": [classes],
    "untested": [classes with no held-out photo]}; with no held-out photo at all, the folder source holds out a
    fifth of the photos itself, photo by photo (bursts then sit on both sides).
    GraftError, with nothing moved, for an empty inbox, fewer than 2 classes, a used name, or a busy project.
    """
    directory = Path(directory).resolve()
    project.read(directory)
    project.check_round_name(name)
    mode = project.round_mode(replay, naive)
    with project.locked(directory):
        state = project.read(directory)
        project.check_new_round(directory, state, name)
        own = project.round_settings(settings or {}, state["settings"])
        with inbox_lock(directory):
            restore_orphans(directory, state)
            plan, to_train = _plan(directory, list(scan(inbox_dir(directory)).values()))
            target = project.fresh(directory / project.SAMPLES / name)
            _move_all(plan, target)
        source = check_source(f"folder:{target}")
        taken = _counts(plan)
        entry = {"name": name, "data": source, "mode": mode, "replay": replay, "settings": own}
        project.append_round(directory, state, {**entry, "inbox": {"taken": taken, "moved_to_train": to_train}})
        _remove_empty_class_folders(inbox_dir(directory))
    return {
        "round": name,
        "index": len(state["rounds"]),
        "data": source,
        "taken": taken,
        "moved_to_train": to_train,
        "untested": [label for label, count in taken.items() if count["test"] == 0],
    }


def _plan(directory: Path, entries: list[Entry]) -> tuple[list[tuple[Entry, str]], list[str]]:
    """Each inbox photo with the side it takes in the round, and the classes whose photos all were on the test
    side (moved to train: a folder source needs every test class in train). GraftError when no round can be made."""
    if not entries:
        raise GraftError(
            f"the inbox of {directory} is empty: send photos from the phone page (teach mode) or POST /v1/samples first"
        )
    trained = {entry.label for entry in entries if entry.split == "train"}
    to_train = sorted({entry.label for entry in entries} - trained)
    classes = sorted({entry.label for entry in entries})
    if len(classes) < MIN_CLASSES:
        raise GraftError(
            f"the inbox of {directory} holds photos of {len(classes)} class ({', '.join(classes)}); a round needs "
            f"at least {MIN_CLASSES}: teach another class (or send photos of a class the model knows)"
        )
    plan = [(entry, "train" if entry.label in to_train else entry.split) for entry in entries]
    return plan, to_train


def _move_all(plan: list[tuple[Entry, str]], target: Path) -> None:
    """Rename every photo into `target`; if one fails, the ones already moved go back and GraftError says why."""
    moved: list[tuple[Path, Path]] = []
    try:
        for entry, side in plan:
            destination = target / side / entry.label / entry.path.name
            destination.parent.mkdir(parents=True, exist_ok=True)
            os.rename(entry.path, destination)
            moved.append((entry.path, destination))
    except OSError as error:
        for source, destination in reversed(moved):
            with contextlib.suppress(OSError):
                os.rename(destination, source)
        raise GraftError(f"could not move the inbox's photos into {target}: {error.strerror or error}") from None


def _counts(plan: list[tuple[Entry, str]]) -> dict[str, dict[str, int]]:
    taken: dict[str, dict[str, int]] = {}
    for entry, side in plan:
        taken.setdefault(entry.label, {"train": 0, "test": 0})[side] += 1
    return dict(sorted(taken.items()))


def restore_orphans(directory: Path, state: dict) -> list[Path]:
    """Move the photos of samples folders that no round names (a crash between moving and recording) back into
    the inbox; a photo already there again is dropped (same content). Under the project and inbox locks."""
    base = directory / project.SAMPLES
    if not base.is_dir():
        return []
    named = {str(Path(r["data"].removeprefix("folder:"))) for r in state["rounds"] if r["data"].startswith("folder:")}
    inbox = inbox_dir(directory)
    present = scan(inbox)
    restored = []
    for folder in sorted(base.iterdir()):
        if not folder.is_dir() or str(folder.resolve()) in named:
            continue
        for sha, entry in scan(folder).items():
            if sha in present:
                entry.path.unlink()
                continue
            destination = inbox / entry.split / entry.label / entry.path.name
            destination.parent.mkdir(parents=True, exist_ok=True)
            os.rename(entry.path, destination)
        _remove_tree_if_empty(folder)
        restored.append(folder)
    return restored


def _remove_empty_class_folders(root: Path) -> None:
    for split in ("train", "test"):
        base = root / split
        if base.is_dir():
            for folder in base.iterdir():
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only when empty
            with contextlib.suppress(OSError):
                base.rmdir()


def _remove_tree_if_empty(folder: Path) -> None:
    for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            path.rmdir()
    with contextlib.suppress(OSError):
        folder.rmdir()
