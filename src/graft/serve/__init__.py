"""Serving a bundle over HTTP to phones and programs: FastAPI app, micro-batching, ONNX Runtime or PyTorch.

import graft
app = graft.serve.create_app("runs/x/bundle", max_batch=16)   # an ASGI app, e.g. for uvicorn or tests
graft.serve.serve("runs/x/bundle", port=8000)                 # what `graft serve` runs
"""

from graft.serve.app import create_app
from graft.serve.run import serve
from graft.serve.settings import ServeSettings

__all__ = ["ServeSettings", "create_app", "serve"]
