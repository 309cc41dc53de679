"""The loaded model and its replacement: reload a bundle without dropping a request.

A request takes the current `Loaded` model for its whole life (decode with its spec, batch with its batcher,
rank with its classes). A reload loads the new bundle in a thread, then swaps it in at once: new requests get
the new model, requests already holding the old one finish on it, and the old batcher is closed only when the
last of them is done.

Serving a rounds project follows its promotions: the model is the project's `current` bundle, a plain reload
takes the newest promoted one, and `watch` reloads by itself when `current.json` changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from graft.bundle import Bundle, load
from graft.errors import GraftError
from graft.exports import onnx_export
from graft.io import file_sha256
from graft.record import WEIGHTS_FILE
from graft.rounds.project import CURRENT, current_bundle, resolve_bundle
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
    weights_sha256: str | None  # None for a bundle that was never saved
    export: dict | None  # {"usable", "note"} of its ONNX export as loaded; None when unsaved
    meta: dict = field(default_factory=dict)  # the bundle's record as JSON, built once per load for GET /v1/model
    active: int = 0
    retired: bool = False
    idle: asyncio.Event = field(default_factory=asyncio.Event)


def model_id(bundle: Bundle, weights_sha256: str | None = None) -> str:
    """`<name>-<sha256 of model.safetensors, 12 hex>`: stable for the same weights, new for new ones.

    The name is the bundle directory's, or its run directory's for `RUN_DIR/bundle` as `graft train` writes.
    """
    if bundle.path is None:
        return f"{bundle.architecture.timm_name}-unsaved"
    path = Path(bundle.path).resolve()
    name = path.parent.name if path.name == "bundle" and path.parent.name else path.name
    return f"{name}-{(weights_sha256 or file_sha256(path / WEIGHTS_FILE))[:12]}"


def load_model(source: Bundle | str | Path, settings: ServeSettings) -> Loaded:
    """Load a bundle (or take a loaded one) with its engine; blocking, so reloads call it in a thread.

    The weights are hashed once here: for the model id, the export check and later comparisons.
    """
    bundle = source if isinstance(source, Bundle) else load(source)
    weights = export = None
    if bundle.path is not None:
        weights = file_sha256(Path(bundle.path) / WEIGHTS_FILE)
        export = onnx_export(bundle, weights_sha256=weights)
    engine, name, note = open_engine(bundle, settings.engine, settings.threads, export, settings, weights)
    batcher = Batcher(engine, max_batch=settings.max_batch, max_delay_s=settings.max_delay_ms / 1000)
    now = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    summary = None if export is None else {"usable": export[0] is not None, "note": export[1]}
    return Loaded(
        bundle, engine, name, note, model_id(bundle, weights), batcher, now, weights, summary, bundle.metadata()
    )


def resolve(source: Bundle | str | Path) -> tuple[Bundle | Path, Path | None]:
    """What to load for `source`, and the rounds project it came from (None for a bundle)."""
    if isinstance(source, Bundle):
        return source, None
    resolved = resolve_bundle(source)
    return resolved.bundle, resolved.project


def reload_root(loaded: Loaded, settings: ServeSettings, project: Path | None) -> Path | None:
    """Where `POST /v1/reload {"bundle": PATH}` may load from: --reload-root, else the rounds project, else the
    directory holding the served bundle's run (`runs/` for `runs/x/bundle`, when `runs/x` is a graft run directory
    with its config.json; the bundle's parent otherwise), so sibling runs can be loaded; None for an unsaved bundle
    without --reload-root."""
    if settings.reload_root is not None:
        return Path(settings.reload_root).resolve()
    if project is not None:
        return project.resolve()
    if loaded.bundle.path is None:
        return None
    path = Path(loaded.bundle.path).resolve()
    in_a_run = path.name == "bundle" and (path.parent / "config.json").is_file()
    return path.parent.parent if in_a_run else path.parent


class NotReloadable(GraftError):
    """A reload path that is outside the reload root or is not a loadable bundle; deliberately one message."""


def reload_target(root: Path | None, given: str) -> Path:
    """The bundle directory `given` names (a relative path is taken from the server's working directory, as on
    its command line), if it lies under `root`.

    One neutral error for every way it can fail (outside the root, missing, not a directory, no graft.json, an
    unreadable name), so that a client cannot map the file system through reload's answers.
    """
    refusal = NotReloadable(f"cannot reload from that path: give a bundle directory under --reload-root ({root})")
    if root is None or not given or "\x00" in given or len(given) > 4096:
        raise refusal
    try:
        target = Path(given).resolve()
        inside = target.is_relative_to(root) and (target / "graft.json").is_file()
    except (OSError, ValueError, RuntimeError):
        raise refusal from None
    if not inside:
        raise refusal
    return target


class ModelHolder:
    """The current model, swapped by `reload` while requests keep going.

    `project`, when set, is a rounds project whose promoted bundle is served (see `watch`).
    """

    def __init__(self, loaded: Loaded, settings: ServeSettings, project: Path | None = None) -> None:
        self.current, self.settings, self.project = loaded, settings, project
        self.reload_root = reload_root(loaded, settings, project)
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
        """Load `path` (default: the project's promoted bundle, or the current bundle's directory again) and swap
        it in; (old, new). An explicit `path` stops following a project.

        A bundle that fails to load raises its GraftError and the current model stays.
        """
        self._reload_lock = self._reload_lock or asyncio.Lock()
        async with self._reload_lock:
            if path is not None:
                target = path
            elif self.project is not None:
                target = current_bundle(self.project)[0]
            else:
                target = self.current.bundle.path
            if target is None:
                raise GraftError("this server's bundle was never saved, so there is nothing to reload from")
            new = await asyncio.to_thread(load_model, Path(target), self.settings)
            if path is not None:  # pinned only once it loaded: a typo keeps the server following its project
                self.project = None
            old, self.current = self.current, new
            log.info("reloaded %s: %s (%s) replaces %s", target, new.model_id, new.engine_name, old.model_id)
            task = asyncio.get_running_loop().create_task(self._retire(old))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
            return old, new

    async def watch(self, interval_s: float) -> None:
        """Reload whenever the project's `current.json` names another bundle (a round was promoted); runs until
        cancelled. A bundle that fails to load is logged and the served model stays."""
        seen: tuple[int, int, int] | None = (-1, -1, -1)  # the first look compares with what was loaded
        while self.project is not None:
            await asyncio.sleep(interval_s)
            if self.project is None:
                break
            stamp = _stamp(self.project / CURRENT)
            if stamp == seen:
                continue
            seen = stamp
            try:
                target = current_bundle(self.project)[0]
                if not await asyncio.to_thread(_serving, self.current, target):  # hashing stays off the loop
                    await self.reload()
            except (GraftError, OSError) as error:
                log.error("not following the new round, still serving %s: %s", self.current.model_id, error)
            except Exception:  # the watcher must outlive any one bad round
                log.exception("not following the new round, still serving %s", self.current.model_id)

    async def _retire(self, old: Loaded) -> None:
        old.retired = True
        if old.active:
            await old.idle.wait()
        await old.batcher.close()

    async def close(self) -> None:
        """Stop every batcher (server shutdown); requests still running finish first, new ones are refused."""
        self.closing = True
        for task in list(self._retiring):
            await task
        await self.current.batcher.close()


def _serving(loaded: Loaded, bundle_dir: Path) -> bool:
    """Whether `loaded` is that bundle with those very weights (a redone round reuses its directory)."""
    if loaded.bundle.path is None or Path(loaded.bundle.path).resolve() != bundle_dir:
        return False
    try:
        return loaded.weights_sha256 == file_sha256(bundle_dir / WEIGHTS_FILE)
    except OSError:
        return False


def _stamp(path: Path) -> tuple[int, int, int] | None:
    """Changes whenever the file is replaced (atomic writes give a new inode) or rewritten."""
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_ino, info.st_mtime_ns, info.st_size
