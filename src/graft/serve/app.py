"""The FastAPI app serving a bundle (OpenAPI schema at /openapi.json, docs at /docs with --docs); routes in `api`.

`create_app` loads the model and builds the state the routes reach through dependencies (`api.deps`), then
includes the routers, the upload limit, the Host check and security headers (`guards`), the error handlers
and the lifespan (rounds watcher, background training, clean shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from graft._version import __version__
from graft.bundle import Bundle
from graft.errors import GraftError, first_line
from graft.serve.api import ROUTERS
from graft.serve.api.deps import attach_state
from graft.serve.guards import HostCheck, SecurityHeaders
from graft.serve.handlers import install_error_handlers
from graft.serve.limits import Admission, BodyLimit
from graft.serve.models import ModelHolder, load_model, resolve
from graft.serve.settings import ServeSettings
from graft.serve.training import TrainingWorker, inbox_round

__all__ = ["create_app", "lifespan"]

log = logging.getLogger("graft.serve")


def create_app(bundle: Bundle | str | Path, settings: ServeSettings | None = None, **overrides: Any) -> FastAPI:
    """The FastAPI app serving `bundle` (or a rounds project's promoted bundle, following new promotions);
    `settings` or keyword overrides (e.g. `max_batch=1`) set its limits.

    The bundle is loaded here, so a broken one fails before any server starts.
    """
    settings = dataclasses.replace(settings or ServeSettings(), **overrides).validate()
    source, project = resolve(bundle)
    holder = ModelHolder(load_model(source, settings), settings, project)
    app = FastAPI(
        title="graft serve",
        version=__version__,
        description="Image classification with a graft bundle. Send a photo, get its most likely classes.",
        lifespan=lifespan,
        docs_url="/docs" if settings.docs else None,  # they load scripts from a CDN: off unless asked for
        redoc_url="/redoc" if settings.docs else None,
    )
    decoder = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="graft-decode")
    attach_state(app, holder, settings, Admission(settings.max_queue), decoder)
    # Saving samples (decode, re-encode, write) has a thread of its own: a burst of teach-mode photos never
    # makes predictions wait for the decode pool.
    app.state.sampler = ThreadPoolExecutor(1, thread_name_prefix="graft-samples")
    # Serving a rounds project: the page can train its next round (POST /v1/rounds), one at a time.
    app.state.training = TrainingWorker(project, inbox_round, _follower(holder)) if project is not None else None
    # predict's own --timeout covers its upload (504); the body deadline, a second later, covers every other route
    app.add_middleware(BodyLimit, limit=settings.max_upload_bytes, timeout_s=settings.timeout_s + 1)
    app.add_middleware(HostCheck, allowed=settings.allowed_hosts)
    app.add_middleware(SecurityHeaders)  # outermost: every refusal above gets the headers too
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    return app


def _follower(holder: ModelHolder):
    """Serve a round the page's training promoted at once (the watcher would within --watch), unless the server
    was since pinned to another bundle."""

    async def follow() -> None:
        if holder.project is not None:
            await holder.reload()

    return follow


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Follow a rounds project's promotions while serving, and resume a round the server was training when it
    stopped; at shutdown stop that training (its checkpoint stays), finish what is queued, then stop."""
    holder: ModelHolder = app.state.holder
    settings: ServeSettings = app.state.settings
    training: TrainingWorker | None = getattr(app.state, "training", None)
    watcher = None
    if holder.project is not None and settings.watch_s > 0:
        watcher = asyncio.get_running_loop().create_task(holder.watch(settings.watch_s))
    if training is not None:
        try:
            log.info("training: %s", await training.recover())
        except (GraftError, OSError) as error:  # the model is served anyway; GET /v1/training says what is wrong
            log.error("not resuming the training: %s", first_line(error))
    yield
    if training is not None:
        await training.stop(remember=False)
    if watcher is not None:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    await holder.close()
    app.state.decoder.shutdown(wait=False, cancel_futures=True)
    app.state.sampler.shutdown(wait=False, cancel_futures=True)
