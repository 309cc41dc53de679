"""Which parameters train, and when: `finetune`, `transfer` and `freeze-unfreeze`.

Every parameter has a role: `head` (the classifier, plus a new input stem, which must learn from the start) or
`backbone` (everything else). A frozen backbone does not train *and* keeps its BatchNorm layers in inference mode,
so its running statistics stay those it was trained with; otherwise small batches of new data would quietly
rewrite them.
"""

from __future__ import annotations

from torch import nn

from graft.errors import GraftError
from graft.models.factory import GraftModel
from graft.training.config import TrainConfig


def head_modules(model: GraftModel) -> list[nn.Module]:
    """The layers that always train: the classifier (the whole flatten head) and a learned gray stem."""
    modules: list[nn.Module] = [model.head if model.head is not None else model.classifier()]
    if model.stem is not None:
        modules.append(model.stem)
    return modules


def parameter_roles(model: GraftModel) -> dict[str, str]:
    """`head` or `backbone` for every named parameter."""
    head_ids = {id(p) for module in head_modules(model) for p in module.parameters()}
    return {name: ("head" if id(p) in head_ids else "backbone") for name, p in model.named_parameters()}


def backbone_frozen(config: TrainConfig, epoch: int) -> bool:
    """Whether the backbone is frozen during `epoch` (1-based)."""
    if config.strategy == "transfer":
        return True
    return config.strategy == "freeze-unfreeze" and epoch <= config.head_epochs


def backbone_lr_ratio(config: TrainConfig) -> float:
    if config.backbone_lr_ratio is not None:
        return config.backbone_lr_ratio
    return 0.1 if config.strategy == "freeze-unfreeze" else 1.0


def check_strategy(config: TrainConfig) -> None:
    if config.strategy == "freeze-unfreeze" and config.head_epochs >= config.epochs:
        raise GraftError(
            f"freeze-unfreeze: --head-epochs {config.head_epochs} leaves no epoch to unfreeze "
            f"(--epochs {config.epochs}); use more epochs or --strategy transfer"
        )


def set_phase(model: GraftModel, frozen: bool) -> None:
    """Training mode for an epoch: everything trains, or only the head with the backbone in inference mode."""
    roles = parameter_roles(model)
    for name, param in model.named_parameters():
        param.requires_grad_(not frozen or roles[name] == "head")
    model.train()
    if frozen:
        model.backbone.eval()
        for module in head_modules(model):
            module.train()


def trainable_names(config: TrainConfig, model: GraftModel) -> set[str]:
    """Parameters the optimizer holds: all of them, or only the head's under `transfer`."""
    roles = parameter_roles(model)
    if config.strategy == "transfer":
        return {name for name, role in roles.items() if role == "head"}
    return set(roles)
