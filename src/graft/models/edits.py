"""Structural edits a bundle records so its model can be rebuilt: inserted blocks and widened convs.

`graft.json` stores them in `architecture.edits`; `build_model` replays them on a fresh timm model, in order,
before the saved weights are loaded. Only the *structure* lives here; how weights are initialised so that the
edited model computes the same function is model surgery (`graft.surgery`), a higher layer.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from graft.errors import GraftError
from graft.models.names import resolve_name
from graft.models.widening import WidenPlan, widen_plan, widen_structure

BLOCK_KINDS: tuple[str, ...] = ("relu-residual", "residual", "relu", "transformer")  # "relu": older bundles' chain


class ConvBnRelu(nn.Sequential):
    """Conv3×3 + BatchNorm + ReLU keeping the channel count: what `deeper --block relu` inserted before issue 20.

    Still rebuilt for bundles that record it; no longer inserted, because its identity rests on stored BatchNorm
    statistics and breaks at the first training step.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.act = nn.ReLU(inplace=False)


class ZeroResidual(nn.Module):
    """x + BN(Conv3×3(x)): identity for any input when BN's scale and shift start at zero."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bn(self.conv(x))


class ZeroResidualRelu(ZeroResidual):
    """ReLU(x + BN(Conv3×3(x))): a ResNet basic block's shape; with BN's scale and shift at zero (timm's
    zero_init_last) it is the identity on non-negative inputs in eval *and* train mode, whatever the statistics."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.bn(self.conv(x)))


def make_block(kind: str, channels: int) -> nn.Module:
    if kind == "relu-residual":
        return ZeroResidualRelu(channels)
    if kind == "relu":
        return ConvBnRelu(channels)
    if kind == "residual":
        return ZeroResidual(channels)
    if kind == "transformer":
        raise GraftError("a transformer block is copied from its neighbour: use transformer_block(root, after)")
    raise GraftError(f"unknown block {kind!r}; choose one of {', '.join(BLOCK_KINDS)}")


def is_transformer_block(module: nn.Module) -> bool:
    """A pre-norm transformer block (timm's ViT, DeiT, EVA…): residual branches ending in attn.proj and mlp.fc2."""
    attn, mlp = getattr(module, "attn", None), getattr(module, "mlp", None)
    return isinstance(getattr(attn, "proj", None), nn.Linear) and isinstance(getattr(mlp, "fc2", None), nn.Linear)


def transformer_block(root: nn.Module, after: str) -> nn.Module:
    """A copy of the transformer block at `after` (or of the last block when `after` is the block sequence): the
    shape of block `--insert-after` adds to a ViT, built from its neighbour so every option (heads, LayerScale,
    norms, MLP kind) matches without knowing them."""
    name = resolve_name(root, after)
    module = root.get_submodule(name)
    if isinstance(module, nn.Sequential) and len(module):
        module = module[-1]
    if not is_transformer_block(module):
        raise GraftError(
            f"{after.removeprefix('backbone.')} is not a transformer block with attn.proj and mlp.fc2 "
            f"({type(module).__name__}); a transformer block can only follow one"
        )
    return copy.deepcopy(module)


def insert_block(root: nn.Module, after: str, block: nn.Module) -> str:
    """Insert `block` so it runs right after module `after`; returns the block's module name.

    Existing weights keep their names: the block goes into the parent sequence after `after`, or at the end of
    `after` itself when that is a sequence (e.g. a ResNet stage), so a saved state dict still loads by name.
    """
    after = resolve_name(root, after)
    parent_name, _, child = after.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    if isinstance(parent, nn.Sequential):
        new_child = _free_name(parent, f"{child}_deeper")
        items = list(parent._modules.items())
        position = [key for key, _ in items].index(child) + 1
        items.insert(position, (new_child, block))
        parent._modules.clear()
        parent._modules.update(items)
        return f"{parent_name}.{new_child}" if parent_name else new_child
    target = root.get_submodule(after)
    if isinstance(target, nn.Sequential):
        new_child = _free_name(target, "deeper")
        target.add_module(new_child, block)
        return f"{after}.{new_child}"
    raise GraftError(
        f"cannot insert after {after.removeprefix('backbone.')}: neither it nor its parent is a sequence of layers "
        "(choose a stage such as layer2, stages.1 or blocks.3)"
    )


def _free_name(parent: nn.Module, base: str) -> str:
    name, index = base, 1
    while name in parent._modules:
        index += 1
        name = f"{base}{index}"
    return name


def apply_edits(root: nn.Module, edits: list[dict], input_shape: tuple[int, ...]) -> None:
    """Replay recorded edits on a freshly built model (structure only); `input_shape` (C, H, W) is what the
    model takes, which widening needs to follow the data flow."""
    for edit in edits:
        op = edit.get("op")
        if op == "insert" and edit["block"] == "transformer":
            block = transformer_block(root, str(edit["after"]))
            name = insert_block(root, str(edit["after"]), block)
            if name != edit["name"]:
                raise GraftError(f"inserted block came out as {name}, the bundle records {edit['name']}")
        elif op == "insert":
            block = make_block(edit["block"], int(edit["channels"]))
            name = insert_block(root, edit["after"], block)
            if name != edit["name"]:
                raise GraftError(f"inserted block came out as {name}, the bundle records {edit['name']}")
        elif op == "widen":
            widen_structure(root, widen_plan(root, str(edit["layer"]), input_shape), int(edit["width"]))
        else:
            raise GraftError(f"unknown edit {op!r} in the architecture record")


__all__ = [
    "BLOCK_KINDS",
    "ConvBnRelu",
    "WidenPlan",
    "ZeroResidual",
    "apply_edits",
    "insert_block",
    "is_transformer_block",
    "make_block",
    "resolve_name",
    "transformer_block",
    "widen_plan",
    "widen_structure",
]
