"""A rounds project directory and its manifest.

    DIR/rounds.json              settings for every round, the gate, and the rounds (written atomically)
    DIR/current.json             the promoted bundle in use: {"round", "bundle", "why"}
    DIR/rounds/<k>-<name>/       per round: data.json (a mix: source when needed), run/ and bundle/
    DIR/report.json, matrix.png  accuracy matrix and metrics after the latest trained round

A round's `status` is pending (not trained), promoted or rejected (trained; the gate's decision and why are in
`gate`). A pending round whose run directory holds a checkpoint was interrupted and is resumed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from graft.data.sources import normalise_source
from graft.errors import GraftError
from graft.io import atomic_write_json
from graft.rounds.selection import Mode
from graft.train.config import validate

MANIFEST = "rounds.json"
CURRENT = "current.json"
FORMAT = 1
# Where each round's data, run and bundle go is the project's business, not a setting.
NOT_SETTINGS = {"data", "run_dir", "output", "force"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def manifest_path(directory: str | Path) -> Path:
    return Path(directory) / MANIFEST


def read(directory: str | Path) -> dict:
    path = manifest_path(directory)
    if not path.is_file():
        raise GraftError(f"{directory} is not a rounds project (no {MANIFEST}); create it with `graft rounds init`")
    try:
        state = json.loads(path.read_text())
    except ValueError as error:
        raise GraftError(f"{path} is damaged: {error}") from None
    if state.get("format") != FORMAT:
        raise GraftError(f"{path}: unknown format {state.get('format')!r}")
    return state


def write(directory: str | Path, state: dict) -> None:
    atomic_write_json(manifest_path(directory), state)


def check_threshold(value: float | None) -> float | None:
    if value is not None and not 0 <= value <= 1:
        raise GraftError(f"--max-forgetting is a fraction in [0, 1] (0.05 = 5 points), got {value}")
    return value


def init(
    directory: str | Path, *, max_forgetting: float | None = 0.05, force: bool = False, **settings: object
) -> dict:
    """Create a project whose rounds all train with `settings` (any TrainConfig fields but data/run_dir/output)."""
    directory = Path(directory)
    if manifest_path(directory).exists() and not force:
        raise GraftError(f"{directory} is already a rounds project; pass --force to start it again")
    given = {key: value for key, value in settings.items() if value is not None}
    refused = sorted(set(given) & NOT_SETTINGS)
    if refused:
        raise GraftError(f"rounds choose their own {', '.join(refused)}; give data to `graft rounds add`")
    validate(given, origin="rounds settings")
    state = {
        "format": FORMAT,
        "settings": given,
        "max_forgetting": check_threshold(max_forgetting),
        "rounds": [],
    }
    directory.mkdir(parents=True, exist_ok=True)
    write(directory, state)
    (directory / CURRENT).unlink(missing_ok=True)
    return state


def add(directory: str | Path, name: str, data: str, *, replay: float | None = None, naive: bool = False) -> dict:
    """Append a pending round: train on the union of all rounds so far (default), new + replay sample, or new only."""
    state = read(directory)
    if not _NAME.match(name):
        raise GraftError(f"round name {name!r}: use letters, digits, '.', '_' or '-' (e.g. level-2)")
    if any(r["name"] == name for r in state["rounds"]):
        raise GraftError(f"{directory} already has a round named {name!r}")
    if replay is not None and naive:
        raise GraftError("--replay and --naive exclude each other")
    if replay is not None and not 0 < replay <= 1:
        raise GraftError(f"--replay takes a fraction in (0, 1], got {replay}")
    mode: Mode = "naive" if naive else "replay" if replay is not None else "union"
    index = len(state["rounds"]) + 1
    state["rounds"].append(
        {
            "name": name,
            "data": normalise_source(data),
            "mode": mode,
            "replay": replay,
            "dir": f"rounds/{index}-{name}",
            "status": "pending",
        }
    )
    write(directory, state)
    return state


def current(directory: str | Path) -> dict | None:
    path = Path(directory) / CURRENT
    return json.loads(path.read_text()) if path.is_file() else None
