"""Checkpoints that let a run stop at any moment and continue to the same result.

A checkpoint holds everything the rest of the run depends on: model, optimizer, schedule, EMA, the best weights
so far, the epoch and the position inside it, the partial epoch statistics, the history and torch's random
state. It is written to a temporary file and renamed, so a kill during the write leaves the previous checkpoint
intact, and it is read back with `weights_only=True` (tensors and plain values only, never pickled code).
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from graft.errors import GraftError, first_line
from graft.io import atomic_write_bytes

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = 1


def checkpoint_path(run_dir: Path) -> Path:
    return run_dir / CHECKPOINT_NAME


def is_unfinished(run_dir: str | Path) -> bool:
    """Whether a run directory holds a checkpoint, so `train(resume=run_dir)` continues it."""
    return checkpoint_path(Path(run_dir)).is_file()


def save_checkpoint(run_dir: Path, state: dict) -> Path:
    """Atomically replace RUN_DIR/checkpoint.pt with `state` (serialised in memory, then written and renamed)."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buffer)
    return atomic_write_bytes(checkpoint_path(run_dir), buffer.getvalue())


def load_checkpoint(run_dir: Path) -> dict | None:
    """The run's checkpoint, or None when it has none yet (killed before its first epoch ended)."""
    path = checkpoint_path(run_dir)
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # damaged, or not ours: one line, and never torch's advice to allow pickled code
        text = first_line(error, 100)
        why = type(error).__name__ if "weights_only" in str(error) or "pickle" in text.lower() else text
        raise GraftError(
            f"{path} cannot be read: damaged, or not a graft checkpoint ({why}); graft reads checkpoints as "
            "tensors only and never runs code stored in them"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise GraftError(f"{path} is not a graft checkpoint of format {FORMAT}")
    return state


def remove_checkpoint(run_dir: Path) -> None:
    checkpoint_path(run_dir).unlink(missing_ok=True)
