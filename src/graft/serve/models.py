"""The loaded model and its replacement: reload a bundle without dropping a request.

A request takes the current `Loaded` model for its whole life (decode with its spec, batch with its batcher,
rank with its classes). A reload loads the new bundle in a thread, then swaps it in at once: new requests get
the new model, requests already holding the old one finish on it, and the old batcher is closed only when the
last of them is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from graft.bundle import WEIGHTS_FILE, Bundle, load
from graft.io import file_sha256
from graft.serve.batching import Batcher
from graft.serve.engines import Engine, open_engine
from graft.serve.settings import ServeSettings

log = logging.getLogger("graft.serve")


@dataclass
class Loaded:
    """One bundle ready to serve: its engine, batcher and stable id."""

    bundle: Bundle
    engine: Engine
    engine_name: str
    engine_note: str
    model_id: str
    batcher: Batcher
    loaded_at: str
    active: int = 0
    retired: bool = False
    idle: asyncio.Event = field(default_factory=asyncio.Event)


def model_id(bundle: Bundle) -> str:
    """`<name>-<sha256 of model.safetensors, 12 hex>`: stable for the same weights, new for new ones.

    The name is the bundle directory's, or its run directory's for `RUN_DIR/bundle` as `graft train` writes.
    """
    if bundle.path is None:
        return f"{bundle.architecture.timm_name}-unsaved"
    path = Path(bundle.path).resolve()
    name = path.parent.name if path.name == "bundle" and path.parent.name else path.name
    return f"{name}-{file_sha256(path / WEIGHTS_FILE)[:12]}"


def load_model(source: Bundle | str | Path, settings: ServeSettings) -> Loaded:
    """Load a bundle (or take a loaded one) with its engine; blocking, so reloads call it in a thread."""
    bundle = source if isinstance(source, Bundle) else load(source)
    engine, name, note = open_engine(bundle, settings.engine, settings.threads)
    batcher = Batcher(engine, max_batch=settings.max_batch, max_delay_s=settings.max_delay_ms / 1000)
    now = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    return Loaded(bundle, engine, name, note, model_id(bundle), batcher, now)


class ModelHolder:
    """The current model, swapped by `reload` while requests keep going."""

    def __init__(self, loaded: Loaded, settings: ServeSettings) -> None:
        self.current, self.settings = loaded, settings
        self.closing = False
        self._reload_lock: asyncio.Lock | None = None
        self._retiring: set[asyncio.Task] = set()

    @contextlib.contextmanager
    def use(self) -> Iterator[Loaded]:
        """The current model for one request; a reload meanwhile waits for it before closing the old one."""
        loaded = self.current
        loaded.active += 1
        try:
            yield loaded
        finally:
            loaded.active -= 1
            if loaded.retired and loaded.active == 0:
                loaded.idle.set()

    async def reload(self, path: str | Path | None = None) -> tuple[Loaded, Loaded]:
        """Load `path` (default: the current bundle's directory again) and swap it in; (old, new).

        A bundle that fails to load raises its GraftError and the current model stays.
        """
        self._reload_lock = self._reload_lock or asyncio.Lock()
        async with self._reload_lock:
            target = path if path is not None else self.current.bundle.path
            if target is None:
                from graft.errors import GraftError

                raise GraftError("this server's bundle was never saved, so there is nothing to reload from")
            new = await asyncio.to_thread(load_model, Path(target), self.settings)
            old, self.current = self.current, new
            log.info("reloaded %s: %s (%s) replaces %s", target, new.model_id, new.engine_name, old.model_id)
            task = asyncio.get_running_loop().create_task(self._retire(old))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
            return old, new

    async def _retire(self, old: Loaded) -> None:
        old.retired = True
        if old.active:
            await old.idle.wait()
        await old.batcher.close()

    async def close(self) -> None:
        """Stop every batcher (server shutdown); requests still running finish first."""
        for task in list(self._retiring):
            await task
        await self.current.batcher.close()
