"""Models: the timm factory, input modes, and weight loading by name."""

from graft.models.factory import Architecture, GraftModel, build_model, count_parameters, create_model
from graft.models.weights import TransferReport, read_state_dict, transfer_weights

__all__ = [
    "Architecture",
    "GraftModel",
    "TransferReport",
    "build_model",
    "count_parameters",
    "create_model",
    "read_state_dict",
    "transfer_weights",
]
