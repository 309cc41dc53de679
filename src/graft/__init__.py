"""graft: fine-tune pretrained image classifiers, reshape trained models, train in rounds, serve to phones.

The Python API mirrors the CLI:

    import graft
    result = graft.train(data="digits", model="resnet18", epochs=3)
    trainer = graft.Trainer(data=(x, y), epochs=3, callbacks=[...])   # arrays, callbacks, model/history
    result = trainer.fit()
    bundle = graft.load(result.bundle.path)
    bundle.predict("photo.png", top_k=3)
    graft.evaluate(bundle, data="digits")
    graft.surgery(bundle, "bundle-rgb", channels=3, size=64)   # certified model changes
    graft.import_keras("model.h5", "bundles/model")   # a Keras model, same logits, no TensorFlow
    graft.export(bundle, format="onnx")                 # model.onnx in the bundle, checked against PyTorch
    graft.serve.create_app(bundle)                      # the HTTP API and phone page (FastAPI)
"""

from graft._version import __version__
from graft.api import evaluate, info
from graft.bundle import Bundle, Prediction, load
from graft.errors import GraftError
from graft.exports import export
from graft.models.keras.importer import import_keras
from graft.surgery import SurgeryResult, surgery
from graft.train import Callback, TrainConfig, Trainer, train

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
    "surgery",
    "train",
]


def __getattr__(name: str):
    """`graft.serve` on first use: importing graft stays free of FastAPI and uvicorn."""
    if name == "serve":
        import importlib

        return importlib.import_module("graft.serve")
    raise AttributeError(f"module 'graft' has no attribute {name!r}")
