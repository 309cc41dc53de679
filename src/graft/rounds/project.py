"""A rounds project directory and its manifest.

    DIR/rounds.json              settings for every round, the gate's thresholds, and the rounds (written atomically)
    DIR/current.json             the promoted bundle in use: {"round", "bundle", "why"}
    DIR/rounds/<k>-<name>/       per round: data.json (a mix: source when needed), run/ and bundle/
    DIR/report.json, matrix.png  accuracy matrix and metrics after the latest trained round
    DIR/inbox/, DIR/samples/<name>/   photos sent from a phone, and those a round took (graft.rounds.inbox, intake)
    DIR/archive/<time>/          what `redo` and `init --force` set aside (nothing is deleted)
    DIR/.lock                    held by the command changing the project (train, add, redo, init)

A round's `status` is pending (not trained), promoted or rejected (trained; the gate's decision and why are in
`gate`). A pending round whose run directory holds a checkpoint was interrupted and is resumed. `redo` sends a
trained round (and every later one, which continued from it) back to pending, its old directories archived.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from graft import lock
from graft.errors import GraftError
from graft.io import atomic_write_json
from graft.rounds.gate import Thresholds
from graft.rounds.selection import Mode
from graft.training.config import validate

MANIFEST = "rounds.json"
CURRENT = "current.json"
FORMAT = 1
ARCHIVE = "archive"
LOCK = lock.LOCK
SAMPLES = "samples"  # DIR/samples/<round>/: the inbox photos a round took (graft.rounds.intake)
# Where each round's data, run and bundle go is the project's business, not a setting.
NOT_SETTINGS = {"data", "run_dir", "output", "force"}
# Settings that describe the architecture: round 1 uses them, later rounds take them from the bundle they continue.
ARCHITECTURE_KEYS = {"model", "model_kwargs", "pretrained", "weights", "input_mode", "head", "size", "resize"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def manifest_path(directory: str | Path) -> Path:
    return Path(directory) / MANIFEST


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except ValueError as error:
        raise GraftError(f"{path} is damaged: {error}") from None


def read(directory: str | Path) -> dict:
    path = manifest_path(directory)
    if not path.is_file():
        raise GraftError(f"{directory} is not a rounds project (no {MANIFEST}); create it with `graft rounds init`")
    state = _read_json(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise GraftError(f"{path}: not a rounds manifest of format {FORMAT} (found {found!r})")
    if not isinstance(state.get("settings"), dict) or not isinstance(state.get("rounds"), list):
        raise GraftError(f"{path} is damaged: it needs 'settings' and 'rounds'")
    # Projects made before --group-by split image by image: they keep doing so, or a new round's test split would
    # differ from the one earlier rounds were measured on. (`init` records the rule of new projects.)
    state["settings"].setdefault("group_by", "none")
    return state


def locked(directory: str | Path) -> contextlib.AbstractContextManager[None]:
    """Held by a command that changes the project: a second one at the same time gets a one-line error instead
    of overwriting the first one's manifest (graft.lock)."""
    busy = "{directory} is busy: another graft rounds command (process {pid}) is changing it; wait for it to finish"
    return lock.locked(directory, busy)


def write(directory: str | Path, state: dict) -> None:
    atomic_write_json(manifest_path(directory), state)


def check_threshold(value: float | None, flag: str = "--max-forgetting") -> float | None:
    if value is not None and not 0 <= value <= 1:
        raise GraftError(f"{flag} is a fraction in [0, 1] (0.05 = 5 points), got {value}")
    return value


# The gate's thresholds in rounds.json.
GATE_KEYS = ("max_forgetting", "min_accuracy", "max_accuracy_drop", "max_forgetting_per_round")


def thresholds(state: dict, **overrides: float | None) -> Thresholds:
    """The project's gate (a manifest written before a rule existed gets that rule's default), with the
    thresholds given for this call on top (None: the project's)."""
    for key, value in overrides.items():
        check_threshold(value, "--" + key.replace("_", "-"))
    stored = {key: state[key] for key in GATE_KEYS if key in state}
    given = {key: value for key, value in overrides.items() if value is not None}
    return Thresholds(**{**stored, **given})


def init(
    directory: str | Path,
    *,
    max_forgetting: float | None = 0.05,
    min_accuracy: float | None = None,
    max_accuracy_drop: float | None = 0.0,
    max_forgetting_per_round: float | None = None,
    force: bool = False,
    **settings: object,
) -> dict:
    """Create a project whose rounds all train with `settings` (any TrainConfig fields but data/run_dir/output).

    The gate (graft.rounds.gate): `max_forgetting` of earlier rounds, `min_accuracy` on the round's own test
    split (None: better than chance), `max_accuracy_drop` of average accuracy against the current bundle and
    `max_forgetting_per_round`, the most any ONE earlier round may be forgotten (None: off).
    `force` starts an existing project again; its rounds, report and current pointer move to `DIR/archive/<time>/`.
    """
    directory = Path(directory)
    if manifest_path(directory).exists() and not force:
        raise GraftError(f"{directory} is already a rounds project; pass --force to start it again")
    given = {key: value for key, value in settings.items() if value is not None}
    given.setdefault("group_by", "auto")  # recorded, so that `read` can tell older projects (image by image) apart
    refused = sorted(set(given) & NOT_SETTINGS)
    if refused:
        raise GraftError(f"rounds choose their own {', '.join(refused)}; give data to `graft rounds add`")
    validate(given, origin="rounds settings")
    state = {
        "format": FORMAT,
        "settings": given,
        "max_forgetting": check_threshold(max_forgetting),
        "min_accuracy": check_threshold(min_accuracy, "--min-accuracy"),
        "max_accuracy_drop": check_threshold(max_accuracy_drop, "--max-accuracy-drop"),
        "max_forgetting_per_round": check_threshold(max_forgetting_per_round, "--max-forgetting-per-round"),
        "rounds": [],
    }
    with locked(directory):
        # The manifest and pointer go first: cut short, the rest is a folder `init` sets aside again.
        old = [directory / name for name in (MANIFEST, CURRENT, "rounds", SAMPLES, "report.json", "matrix.png")]
        _archive(directory, old)
        write(directory, state)
    return state


def round_settings(settings: dict, project_settings: dict) -> dict:
    """A round's own training settings (epochs, lr, schedule, …), checked against the project's.

    Architecture settings are refused: every round continues the previous round's model (change a model with
    `graft surgery`).
    """
    given = {key: value for key, value in settings.items() if value is not None}
    refused = sorted(set(given) & (NOT_SETTINGS | ARCHITECTURE_KEYS))
    if refused:
        raise GraftError(
            f"a round cannot set {', '.join(refused)}: rounds continue one model (set it at `graft rounds init`)"
        )
    validate({**project_settings, **given}, origin="round settings")
    return given


def round_mode(replay: float | None, naive: bool) -> Mode:
    """union (default), replay (with `replay`, a fraction) or naive; GraftError for a contradiction."""
    if replay is not None and naive:
        raise GraftError("--replay and --naive exclude each other")
    if replay is not None and not 0 < replay <= 1:
        raise GraftError(f"--replay takes a fraction in (0, 1], got {replay}")
    return "naive" if naive else "replay" if replay is not None else "union"


def add(
    directory: str | Path,
    name: str,
    data: str,
    *,
    replay: float | None = None,
    naive: bool = False,
    settings: dict | None = None,
) -> dict:
    """Append a pending round: train on the union of all rounds so far (default), new + replay sample, or new only.

    `settings` (e.g. `{"epochs": 3, "lr": 1e-3}`) override the project's training settings for this round only.
    """
    read(directory)
    check_round_name(name)
    mode = round_mode(replay, naive)
    # Imported here: resolving a project's bundle (`graft info PROJECT`) needs no torch.
    from graft.data.sources import check_source

    source = check_source(data)
    with locked(directory):
        state = read(directory)
        check_new_round(directory, state, name)
        own = round_settings(settings or {}, state["settings"])
        append_round(directory, state, {"name": name, "data": source, "mode": mode, "replay": replay, "settings": own})
    return state


def check_round_name(name: str) -> None:
    """A round name is part of folder names: letters, digits, '.', '_' and '-' only."""
    if not _NAME.match(name):
        raise GraftError(f"round name {name!r}: use letters, digits, '.', '_' or '-' (e.g. level-2)")


def check_new_round(directory: str | Path, state: dict, name: str) -> None:
    if any(r["name"] == name for r in state["rounds"]):
        raise GraftError(f"{directory} already has a round named {name!r}")


def append_round(directory: str | Path, state: dict, entry: dict) -> None:
    """Record `entry` ({name, data, mode, replay, settings, …}) as the next pending round; under `locked`."""
    index = len(state["rounds"]) + 1
    state["rounds"].append({**entry, "dir": f"rounds/{index}-{entry['name']}", "status": "pending"})
    write(directory, state)


def redo(
    directory: str | Path,
    name: str,
    *,
    mode: Mode | None = None,
    replay: float | None = None,
    settings: dict | None = None,
) -> tuple[dict, Path | None]:
    """Send round `name` and every later round back to pending, optionally with another mode or settings.

    For a rejected round: train it again with replay, the union or other settings. Later rounds continued from
    it, so they are redone too. Their directories move to `DIR/archive/<time>/` (nothing is deleted), and
    `current` falls back to the newest promoted round before `name`. Returns (state, archive folder or None).
    """
    directory = Path(directory)
    with locked(directory):
        state = finish_archiving(directory, read(directory))
        names = [r["name"] for r in state["rounds"]]
        if name not in names:
            raise GraftError(f"{directory} has no round named {name!r} (rounds: {', '.join(names) or 'none'})")
        k = names.index(name)
        entry = state["rounds"][k]
        if replay is not None and mode is None:
            mode = "replay"
        if mode is not None:
            if (mode == "replay") != (replay is not None):
                raise GraftError("a replay fraction goes with the replay mode, and only with it")
            entry["mode"], entry["replay"] = round_mode(replay, mode == "naive"), replay
        if settings:
            entry["settings"] = {**entry.get("settings", {}), **round_settings(settings, state["settings"])}

        # The manifest first: a crash after it leaves pending rounds and a note of what still has to move,
        # which the next rounds command finishes (finish_archiving) before anything else.
        later = state["rounds"][k:]
        moving = [r["dir"] for r in later if (directory / r["dir"]).exists()]
        archive = fresh(directory / ARCHIVE / _stamp()) if moving else None
        for r in later:
            r["status"] = "pending"
            for key in ("training_data", "accuracy", "metrics", "gate"):
                r.pop(key, None)
        if archive is not None:
            state["archiving"] = {"to": str(archive.relative_to(directory)), "dirs": moving}
        write(directory, state)

        pointer = read_current(directory)
        if pointer is not None and pointer.get("index", 0) > k:  # the current bundle is about to be archived
            kept = [i for i, r in enumerate(state["rounds"][:k]) if r["status"] == "promoted"]
            if kept:
                set_current(directory, state, kept[-1], f"round {name!r} and later are being redone")
            else:
                (directory / CURRENT).unlink(missing_ok=True)
        return finish_archiving(directory, state), archive


def finish_archiving(directory: Path, state: dict) -> dict:
    """Move the folders that a `redo` set aside (again, after a crash) and drop its note from the manifest."""
    pending = state.pop("archiving", None)
    if pending:
        _archive(directory, [directory / d for d in pending["dirs"]], directory / pending["to"])
        write(directory, state)
    return state


def set_current(directory: Path, state: dict, k: int, why: str) -> None:
    """Point `current.json` at round k's bundle (0-based), which must be complete on disk already."""
    entry = state["rounds"][k]
    record = {"round": entry["name"], "index": k + 1, "bundle": f"{entry['dir']}/bundle", "why": why}
    atomic_write_json(directory / CURRENT, record)


def _stamp() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y%m%d-%H%M%S")


def _archive(directory: Path, paths: list[Path], into: Path | None = None) -> Path | None:
    """Move `paths` (those that exist) under `into` (default: a new DIR/archive/<time>/), keeping their path
    relative to the project; the archive folder, or None when nothing moved."""
    present = [p for p in paths if p.exists()]
    if not present:
        return None
    into = into or fresh(directory / ARCHIVE / _stamp())
    for path in present:
        target = into / path.relative_to(directory)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(path), str(target))
    return into


def fresh(path: Path) -> Path:
    """`path`, or `path-2`, `path-3`, … : the first that does not exist yet."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate


def read_current(directory: str | Path) -> dict | None:
    """`current.json`'s record, None when no round was promoted; a damaged file is a GraftError."""
    path = Path(directory) / CURRENT
    if not path.is_file():
        return None
    pointer = _read_json(path)
    if not isinstance(pointer, dict) or not isinstance(pointer.get("bundle"), str):
        raise GraftError(f"{path} is damaged: it does not name a bundle")
    return pointer


def is_project(path: str | Path) -> bool:
    return manifest_path(path).is_file()


@dataclass(frozen=True)
class BundleSource:
    """What a path names: a bundle directory, or a rounds project and the bundle it has promoted."""

    bundle: Path
    project: Path | None = None
    pointer: dict | None = None  # the project's `current.json` record

    def note(self) -> str | None:
        """The line commands print when a project stands for its bundle (None for a plain bundle)."""
        if self.project is None or self.pointer is None:
            return None
        return (
            f"{self.project} is a rounds project: using round {self.pointer['index']} ({self.pointer['round']}), "
            f"{self.bundle}"
        )


def resolve_bundle(path: str | Path) -> BundleSource:
    """The bundle that `path` means: itself, or a rounds project's promoted bundle. Every command and
    `graft.load` resolve paths here, so `graft predict PROJECT` and `graft.load(PROJECT)` agree."""
    path = Path(path)
    if not is_project(path):
        return BundleSource(path)
    bundle, pointer = current_bundle(path)
    return BundleSource(bundle, path.resolve(), pointer)


def current_bundle(directory: str | Path) -> tuple[Path, dict]:
    """The promoted bundle's directory and the `current.json` record naming it.

    It is what a server or `graft predict DIR` should use: the newest round that passed the gate.
    """
    directory = Path(directory)
    read(directory)
    pointer = read_current(directory)
    if pointer is None:
        raise GraftError(f"{directory} has no promoted round yet; train one with `graft rounds train {directory}`")
    return (directory / pointer["bundle"]).resolve(), pointer
