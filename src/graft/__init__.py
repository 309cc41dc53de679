"""graft: fine-tune pretrained image classifiers, reshape trained models, train in rounds, serve to phones.

The Python API mirrors the CLI:

    import graft
    result = graft.train(data="digits", model="resnet18", epochs=3)
    bundle = graft.load(result.bundle.path)
    bundle.predict("photo.png", top_k=3)
    graft.evaluate(bundle, data="digits")
    graft.surgery(bundle, "bundle-rgb", channels=3, size=64)   # certified model changes
    graft.import_keras("model.h5", "bundles/model")   # a Keras model, same logits, no TensorFlow
"""

from graft._version import __version__
from graft.api import evaluate, info
from graft.bundle import Bundle, Prediction, load
from graft.errors import GraftError
from graft.models.keras.importer import import_keras
from graft.surgery import SurgeryResult, surgery
from graft.train import TrainConfig, train

__all__ = [
    "Bundle",
    "GraftError",
    "Prediction",
    "SurgeryResult",
    "TrainConfig",
    "__version__",
    "evaluate",
    "import_keras",
    "info",
    "load",
    "surgery",
    "train",
]
