"""What routes need from the running app, as dependencies that read `request.app.state`.

`create_app` puts the state there once; routes declare what they use (`holder: HolderDep`) instead of closing
over create_app's locals, so each route module stands alone and a test can swap the state on a built app.
The getters are `async` so FastAPI calls them on the event loop rather than hopping to a thread per request.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Annotated

from fastapi import Depends, FastAPI, Request

from graft.serve.limits import Admission
from graft.serve.models import ModelHolder
from graft.serve.settings import ServeSettings


def attach_state(
    app: FastAPI,
    holder: ModelHolder,
    settings: ServeSettings,
    admission: Admission,
    decoder: ThreadPoolExecutor,
) -> None:
    """Store what the dependencies below read; the attribute names are the ones `graft serve` and tests use."""
    app.state.holder, app.state.settings = holder, settings
    app.state.admission, app.state.decoder = admission, decoder


async def get_holder(request: Request) -> ModelHolder:
    """The model holder: the current model, swapped by reloads."""
    return request.app.state.holder


async def get_settings(request: Request) -> ServeSettings:
    """The server's limits, batching and token."""
    return request.app.state.settings


async def get_admission(request: Request) -> Admission:
    """The bound on predict requests held at once."""
    return request.app.state.admission


async def get_decoder(request: Request) -> ThreadPoolExecutor:
    """The thread pool that decodes and preprocesses uploads off the event loop."""
    return request.app.state.decoder


async def get_sampler(request: Request) -> ThreadPoolExecutor:
    """The one thread that saves samples (POST /v1/samples), apart from the decode pool that predict uses."""
    return request.app.state.sampler


HolderDep = Annotated[ModelHolder, Depends(get_holder)]
SettingsDep = Annotated[ServeSettings, Depends(get_settings)]
AdmissionDep = Annotated[Admission, Depends(get_admission)]
DecoderDep = Annotated[ThreadPoolExecutor, Depends(get_decoder)]
SamplerDep = Annotated[ThreadPoolExecutor, Depends(get_sampler)]
