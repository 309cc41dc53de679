"""Where data sets live: `--data-root`, else `$GRAFT_DATA`, else the user's cache directory."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

DATA_ROOT_ENV = "GRAFT_DATA"


def data_root(explicit: str | Path | None = None) -> Path:
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get(DATA_ROOT_ENV):
        return Path(os.environ[DATA_ROOT_ENV]).expanduser()
    return Path(platformdirs.user_cache_dir("graft")) / "datasets"
