"""The HTTP API as routers, one concept per module; `graft.serve.app.create_app` includes `ROUTERS`.

    POST /v1/predict   image as multipart field `file` or as the raw body; `?top_k=` → classes with probabilities
    GET  /v1/model     spec, classes, metrics, provenance, engine
    POST /v1/reload    load the bundle again (or `{"bundle": PATH}`) without dropping requests
    POST /v1/samples   multipart `label` + `file` (repeatable) → saved in the served rounds project's inbox
    GET  /v1/samples   photos waiting in the inbox, per class
    POST /v1/samples/video  multipart `label` + one video `file` → its frames saved in the inbox like photos
    POST /v1/rounds    turn a served rounds project's inbox into a round and train it in the background
    GET  /v1/training  that training's progress: state, epoch, ETA, accuracy, the gate's decision
    GET  /healthz      the process is up;  GET /readyz  a model is loaded and requests are accepted
    GET  /             the phone page

Every /v1 route needs the token (when the server has one): the rule is declared once, on the `v1` router.
"""

from __future__ import annotations

from fastapi import APIRouter

from graft.serve.api import health, model, phone, predict, samples, training, videos
from graft.serve.api.auth import require_token

v1 = APIRouter(prefix="/v1", dependencies=[require_token])
v1.include_router(predict.router)
v1.include_router(model.router)
v1.include_router(samples.router)
v1.include_router(videos.router)
v1.include_router(training.router)

ROUTERS: tuple[APIRouter, ...] = (v1, health.router, phone.router)

__all__ = ["ROUTERS", "v1"]
