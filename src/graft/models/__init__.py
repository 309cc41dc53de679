"""Models: pure builders (timm backbones, input modes, imported Keras graphs) and weight loading by name."""

from graft.models import keras as _keras  # noqa: F401  (registers the Keras backbone kind and timm names)
from graft.models import small_cnn as _small_cnn  # noqa: F401  (registers graft_cnn_* with timm)
from graft.models.factory import GraftModel, build_model, count_parameters, create_model, register_backbone_kind
from graft.models.weights import TransferReport, read_state_dict, transfer_weights
from graft.record import Architecture

__all__ = [
    "Architecture",
    "GraftModel",
    "TransferReport",
    "build_model",
    "count_parameters",
    "create_model",
    "read_state_dict",
    "register_backbone_kind",
    "transfer_weights",
]
