"""Structural edits a bundle records so its model can be rebuilt: inserted blocks and widened convs.

`graft.json` stores them in `architecture.edits`; `build_model` replays them on a fresh timm model, in order,
before the saved weights are loaded. Only the *structure* lives here; how weights are initialised so that the
edited model computes the same function is model surgery (`graft.surgery`), a higher layer.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from graft.errors import GraftError

BLOCK_KINDS: tuple[str, ...] = ("relu-residual", "residual", "relu")  # "relu": the chain of older bundles


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
    raise GraftError(f"unknown block {kind!r}; choose one of {', '.join(BLOCK_KINDS)}")


def resolve_name(root: nn.Module, name: str) -> str:
    """A module name as the user wrote it (timm's names, e.g. `layer2`) → its name inside a GraftModel."""
    modules = dict(root.named_modules())
    for candidate in (name, f"backbone.{name}"):
        if candidate and candidate in modules:
            return candidate
    close = [n.removeprefix("backbone.") for n in modules if n.endswith(name.rsplit(".", 1)[-1])][:5]
    hint = f"; modules with a similar name: {', '.join(close)}" if close else "; list them with `graft info --layers`"
    raise GraftError(f"no layer named {name!r} in this model{hint}")


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


# ---- widening ----------------------------------------------------------------------------------------------

_CHANNELWISE_MODULES = (
    nn.BatchNorm2d,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.SiLU,
    nn.GELU,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Sigmoid,
    nn.ELU,
    nn.Mish,
    nn.Identity,
    nn.Dropout,
    nn.Dropout2d,
    nn.MaxPool2d,
    nn.AvgPool2d,
)
_CHANNELWISE_FUNCTIONS = {
    F.relu,
    F.relu6,
    F.silu,
    F.gelu,
    F.hardswish,
    F.hardsigmoid,
    F.leaky_relu,
    F.dropout,
    F.sigmoid,
    torch.relu,
    torch.sigmoid,
    F.mish,
}
_CHANNELWISE_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_", "contiguous", "clamp", "clamp_"}
_ARITHMETIC = {operator.add, operator.sub, operator.mul, operator.truediv, torch.add, torch.mul}
_ARITHMETIC_METHODS = {"add", "add_", "mul", "mul_", "div", "div_"}


@dataclass(frozen=True)
class WidenPlan:
    """Which modules widening one conv touches: its own output channels, the per-channel modules on the way
    (BatchNorm, activations, depthwise convs), the convs that consume the channels (their input weights are
    divided among copies), and gate producers (a squeeze-excitation's expanding conv, whose per-channel gate
    multiplies the widened channels and so is copied along)."""

    conv: str
    channelwise: tuple[str, ...]
    consumers: tuple[str, ...]
    producers: tuple[str, ...] = ()


class _LeafTracer(fx.Tracer):
    """Keeps convs and BatchNorms (timm's subclasses included) as single nodes."""

    def is_leaf_module(self, module: nn.Module, qualname: str) -> bool:
        return isinstance(module, nn.Conv2d | nn.BatchNorm2d | nn.Linear) or super().is_leaf_module(module, qualname)


def _trace(root: nn.Module, shown: str) -> fx.Graph:
    was_training = root.training
    try:
        return _LeafTracer().trace(root)
    except Exception as error:
        raise GraftError(f"cannot follow the data flow of this model to widen {shown}: {error}") from None
    finally:
        root.train(was_training)


def widen_plan(root: nn.Module, name: str) -> WidenPlan:
    """Follow conv `name`'s output through per-channel layers to the convs that read it.

    Refused when the channels reach anything whose meaning depends on the channel count (an addition of a
    residual branch, a concatenation, a flatten, a linear layer): there, widening cannot preserve the function.
    """
    name = resolve_name(root, name)
    conv = root.get_submodule(name)
    shown = name.removeprefix("backbone.")
    if not isinstance(conv, nn.Conv2d) or conv.groups != 1:
        raise GraftError(f"{shown} is not a plain convolution (widening needs a Conv2d with groups=1)")
    graph = _trace(root, shown)
    modules = dict(root.named_modules())
    starts = [n for n in graph.nodes if n.op == "call_module" and n.target == name]
    if len(starts) != 1:
        raise GraftError(f"{shown} is used {len(starts)} times in the forward pass; widening needs exactly one use")
    channelwise: list[str] = []
    consumers: list[str] = []
    binary: list[fx.Node] = []
    widened = {starts[0]}
    frontier = [starts[0]]
    while frontier:
        node = frontier.pop()
        for user in node.users:
            if user in widened or str(user.target) in consumers:
                continue
            kind = _classify(user, modules, conv.out_channels)
            if kind == "consumer":
                consumers.append(str(user.target))
                continue
            if kind not in ("channelwise", "channelwise-module", "binary"):
                raise GraftError(
                    f"{shown}'s channels reach {kind}, where widening would change what the model computes; "
                    "widen a conv inside a block instead (e.g. layer1.0.conv1 in a ResNet)"
                )
            if kind == "channelwise-module":
                channelwise.append(str(user.target))
            if kind == "binary":
                binary.append(user)
            widened.add(user)
            frontier.append(user)
    producers = [
        _gate_producer(arg, modules, widened, shown) if _is_product(node) else _refuse_sum(shown)
        for node in binary
        for arg in node.args
        if isinstance(arg, fx.Node) and arg not in widened
    ]
    if not consumers:
        raise GraftError(f"{shown}'s channels are not read by another conv; nothing downstream can absorb them")
    return WidenPlan(
        name, tuple(dict.fromkeys(channelwise)), tuple(dict.fromkeys(consumers)), tuple(dict.fromkeys(producers))
    )


def _is_product(node: fx.Node) -> bool:
    """A gate multiplies the channels; a sum with another branch is a residual connection, never a gate."""
    return (node.op == "call_function" and node.target in (operator.mul, torch.mul)) or (
        node.op == "call_method" and node.target in ("mul", "mul_")
    )


def _refuse_sum(shown: str) -> str:
    raise GraftError(
        f"{shown}'s channels reach an addition with another branch (a residual connection): every layer on that "
        "sum would need widening too, which graft does not do; widen a conv inside a block instead (e.g. "
        "layer1.0.conv1 in a ResNet)"
    )


def _gate_producer(node: fx.Node, modules: dict[str, nn.Module], widened: set[fx.Node], shown: str) -> str:
    """The conv whose per-channel output (through activations) meets the widened channels in `node`'s operation.

    Only a private branch qualifies (a gate such as squeeze-excitation's); a residual shortcut, shared with
    the rest of the network, makes widening impossible.
    """
    current = node
    while True:
        if len(current.users) != 1:
            break
        if current.op == "call_module" and isinstance(modules[str(current.target)], nn.Conv2d):
            conv = modules[str(current.target)]
            if conv.groups == 1:
                return str(current.target)
            break
        inputs = [a for a in current.args if isinstance(a, fx.Node)]
        if len(inputs) != 1 or any(a in widened for a in inputs):
            break
        current = inputs[0]
    raise GraftError(
        f"{shown}'s channels reach an addition or product with a branch shared by other layers (a residual "
        "shortcut), where widening would change what the model computes; widen a conv inside a block instead "
        "(e.g. layer1.0.conv1 in a ResNet)"
    )


def _classify(node: fx.Node, modules: dict[str, nn.Module], channels: int) -> str:
    if node.op == "call_module":
        module = modules[str(node.target)]
        if isinstance(module, nn.Conv2d):
            if module.groups == 1:
                return "consumer"
            if module.groups == module.in_channels == module.out_channels == channels:
                return "channelwise-module"  # depthwise: one filter per channel
            return f"a grouped convolution ({node.target})"
        if isinstance(module, _CHANNELWISE_MODULES):
            return "channelwise-module"
        return f"{type(module).__name__} ({node.target})"
    arithmetic = (node.op == "call_function" and node.target in _ARITHMETIC) or (
        node.op == "call_method" and node.target in _ARITHMETIC_METHODS
    )
    if arithmetic:
        nodes = [a for a in node.args if isinstance(a, fx.Node)]
        return "binary" if len(nodes) == 2 else "channelwise"
    if node.op == "call_function" and node.target in _CHANNELWISE_FUNCTIONS:
        return "channelwise"
    if node.op == "call_method" and node.target in _CHANNELWISE_METHODS:
        return "channelwise"
    if node.op == "call_method" and node.target == "mean" and _spatial_only(node):
        return "channelwise"
    what = {torch.cat: "a concatenation", torch.flatten: "a flatten"}.get(
        node.target, getattr(node.target, "__name__", str(node.target))
    )
    return str(what)


def _spatial_only(node: fx.Node) -> bool:
    """A mean over height and width that keeps the channel axis (squeeze-excitation's pooling)."""
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    dims = dims if isinstance(dims, tuple | list) else (dims,)
    return bool(dims) and all(d in (2, 3, -1, -2) for d in dims) and node.kwargs.get("keepdim", False) is True


def widen_structure(root: nn.Module, plan: WidenPlan, width: int) -> None:
    """Resize every module of `plan` for `width` channels (fresh values; surgery fills them)."""
    conv = root.get_submodule(plan.conv)
    if width <= conv.out_channels:
        raise GraftError(f"widen {plan.conv.removeprefix('backbone.')} to more than its {conv.out_channels} channels")
    _resize_out(conv, width)
    for name in plan.channelwise:
        module = root.get_submodule(name)
        if isinstance(module, nn.Conv2d):  # depthwise
            _resize_out(module, width)
            module.in_channels = module.groups = width
        elif isinstance(module, nn.BatchNorm2d):
            module.num_features = width
            for key in ("weight", "bias", "running_mean", "running_var"):
                _replace(module, key, width)
    for name in plan.producers:
        _resize_out(root.get_submodule(name), width)
    for name in plan.consumers:
        module = root.get_submodule(name)
        module.in_channels = width
        shape = list(module.weight.shape)
        shape[1] = width
        module.weight = nn.Parameter(torch.zeros(shape, dtype=module.weight.dtype))


def _resize_out(conv: nn.Conv2d, width: int) -> None:
    conv.out_channels = width
    for key in ("weight", "bias", "offset"):
        if getattr(conv, key, None) is not None:
            _replace(conv, key, width)


def _replace(module: nn.Module, key: str, rows: int) -> None:
    old = getattr(module, key)
    if old is None:
        return
    fresh = torch.ones if key == "running_var" else torch.zeros
    value = fresh((rows, *old.shape[1:]), dtype=old.dtype)
    if isinstance(old, nn.Parameter):
        setattr(module, key, nn.Parameter(value, requires_grad=old.requires_grad))
    else:
        module.register_buffer(key, value)


def apply_edits(root: nn.Module, edits: list[dict]) -> None:
    """Replay recorded edits on a freshly built model (structure only)."""
    for edit in edits:
        op = edit.get("op")
        if op == "insert":
            block = make_block(edit["block"], int(edit["channels"]))
            name = insert_block(root, edit["after"], block)
            if name != edit["name"]:
                raise GraftError(f"inserted block came out as {name}, the bundle records {edit['name']}")
        elif op == "widen":
            widen_structure(root, widen_plan(root, edit["layer"]), int(edit["width"]))
        else:
            raise GraftError(f"unknown edit {op!r} in the architecture record")


__all__ = [
    "BLOCK_KINDS",
    "ConvBnRelu",
    "WidenPlan",
    "ZeroResidual",
    "apply_edits",
    "insert_block",
    "make_block",
    "resolve_name",
    "widen_plan",
    "widen_structure",
]
