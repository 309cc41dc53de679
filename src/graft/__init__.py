"""graft: fine-tune pretrained image classifiers, reshape trained models, train in rounds, serve to phones.

The Python API mirrors the CLI, in tiers (simple call first, power on demand):

    import graft
    result = graft.train(data="digits", model="resnet18", epochs=3)
    trainer = graft.Trainer(data=(x, y), epochs=3, callbacks=[...])   # arrays, callbacks, model/history
    result = trainer.fit()
    bundle = graft.load(result.bundle.path)
    bundle.predict("photo.png", top_k=3)
    graft.evaluate(bundle, data="digits")
    graft.reshape(bundle, "bundle-rgb", channels=3, size=64)   # certified model changes (graft surgery)
    graft.surgery.rechannel(bundle, 3).then(graft.surgery.deepen, "layer3")   # one operation at a time
    graft.import_keras("model.h5", "bundles/model")   # a Keras model, same logits, no TensorFlow
    graft.export(bundle, format="onnx")                 # model.onnx in the bundle, checked against PyTorch
    graft.serve.create_app(bundle)                      # the HTTP API and phone page (FastAPI)

Names load on first use, so `import graft` (and `graft --help`) stays quick and free of torch until needed.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING

from graft._version import __version__
from graft.errors import GraftError

# public name → the module that defines it
_EXPORTS = {
    "Bundle": "graft.bundle",
    "Callback": "graft.training",
    "Prediction": "graft.bundle",
    "SurgeryResult": "graft.surgery",
    "TrainConfig": "graft.training",
    "Trainer": "graft.training",
    "evaluate": "graft.api",
    "export": "graft.exports",
    "import_keras": "graft.keras_import",
    "info": "graft.api",
    "load": "graft.api",
    "reshape": "graft.surgery",
    "train": "graft.training",
}

__all__ = [
    "Bundle",
    "Callback",
    "GraftError",
    "Prediction",
    "SurgeryResult",
    "TrainConfig",
    "Trainer",
    "__version__",
    "evaluate",
    "export",
    "import_keras",
    "info",
    "load",
    "reshape",
    "train",
]

if TYPE_CHECKING:
    from graft.api import evaluate, info, load
    from graft.bundle import Bundle, Prediction
    from graft.exports import export
    from graft.keras_import import import_keras
    from graft.surgery import SurgeryResult, reshape
    from graft.training import Callback, TrainConfig, Trainer, train


def __getattr__(name: str):
    """Public names, and subpackages (`graft.rounds`, `graft.serve`, `graft.surgery`, ...), on first use.

    A subpackage resolves as after `import graft.rounds`, so the documented `graft.rounds.init(...)` works after a
    plain `import graft`.
    """
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    if not name.startswith("_") and importlib.util.find_spec(f"graft.{name}") is not None:
        return importlib.import_module(f"graft.{name}")
    raise AttributeError(f"module 'graft' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS, *_SUBPACKAGES})


_SUBPACKAGES = ("data", "models", "rounds", "serve", "surgery", "training")
