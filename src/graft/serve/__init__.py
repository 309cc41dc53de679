"""Serving a bundle over HTTP to phones and programs: FastAPI app, micro-batching, ONNX Runtime or PyTorch.

import graft
app = graft.serve.create_app("runs/x/bundle", max_batch=16)   # an ASGI app, e.g. for uvicorn or tests
graft.serve.serve("runs/x/bundle", port=8000)                 # what `graft serve` runs

Names load on first use (graft._lazy): `graft serve --help` reads its limits from `graft.serve.settings` without
importing FastAPI or torch.
"""

from typing import TYPE_CHECKING

from graft import _lazy

if TYPE_CHECKING:
    from graft.serve.app import create_app
    from graft.serve.run import serve
    from graft.serve.settings import ServeSettings

__all__ = ["ServeSettings", "create_app", "serve"]

__getattr__, __dir__ = _lazy.exports(
    __name__,
    {"create_app": "graft.serve.app", "serve": "graft.serve.run", "ServeSettings": "graft.serve.settings"},
)
