"""Which modules widening one conv touches, found from the model's data flow (torch.fx), and their new shapes.

Widening a conv gives it more output channels. For the model to compute the same function, every tensor that
carries those channels must carry the copies too, and every layer that *reads* them must split its weights
among the copies. The set is found by following the data flow, not by layer names:

- forward from a widened tensor: per-channel layers (BatchNorm, activations, pools, depthwise convs) carry the
  channels on; a conv or linear layer reading them is a *consumer* (its input weights are divided);
- across a residual sum (or a gate's product): the other operand must carry the same channels, so it is widened
  too, backwards to the layers that *write* it (producers: their output rows are copied). This co-widens a whole
  residual stream: the stem, every block's last conv and BatchNorm and the downsample writing into it, and every
  block reading from it;
- anything else that sees the channels (a concatenation, a LayerNorm over them, a reshape mixing them with other
  dimensions, the model's output, a module used twice) is refused by name, with the reason.

Only the structure lives here (graft.json's edits replay it); the copied weights are model surgery's
(graft.surgery.structure).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from graft.errors import GraftError
from graft.models.names import resolve_name

# Modules that act on each channel alone, in any layout (the channel axis stays where it is).
_ELEMENTWISE_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.SiLU,
    nn.GELU,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Sigmoid,
    nn.Tanh,
    nn.ELU,
    nn.Mish,
    nn.Identity,
    nn.Dropout,
    nn.Dropout2d,
)
# Per-channel over NCHW maps: the channel axis must be 1.
_SPATIAL_MODULES = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_ELEMENTWISE_FUNCTIONS = {
    F.relu,
    F.relu6,
    F.silu,
    F.gelu,
    F.hardswish,
    F.hardsigmoid,
    F.hardtanh,
    F.leaky_relu,
    F.dropout,
    F.sigmoid,
    F.mish,
    F.elu,
    torch.relu,
    torch.sigmoid,
    torch.tanh,
    torch.clamp,
}
_SPATIAL_FUNCTIONS = {F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.avg_pool2d, F.max_pool2d}
_ELEMENTWISE_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "contiguous", "clamp", "clamp_", "float"}
_SUMS = {operator.add, operator.sub, operator.iadd, torch.add, torch.sub}
_PRODUCTS = {operator.mul, operator.truediv, operator.imul, torch.mul, torch.div}
_SUM_METHODS = {"add", "add_", "sub", "sub_"}
_PRODUCT_METHODS = {"mul", "mul_", "div", "div_"}
_REDUCTIONS = {"mean", "sum", "amax", "amin"}
_RESHAPES = {"view", "reshape", "flatten"}
SAMPLE_BATCH = 2


@dataclass(frozen=True)
class WidenPlan:
    """Which modules widening one conv touches: its own output channels (`conv`), the per-channel modules on
    the way (`channelwise`: BatchNorms, depthwise convs), the convs and linear layers that read the channels
    (`consumers`: their input weights are divided among copies), the layers whose output rows are copied along
    (`producers`: a squeeze-excitation's expanding conv, found through a product; `writers`: the other layers
    writing into a residual stream, found through a sum) and bare parameters scaling the channels
    (`parameters`, e.g. a LayerScale, as (name, axis))."""

    conv: str
    channelwise: tuple[str, ...]
    consumers: tuple[str, ...]
    producers: tuple[str, ...] = ()
    writers: tuple[str, ...] = ()
    parameters: tuple[tuple[str, int], ...] = ()
    sums: int = 0  # residual sums the widened channels cross (0: a private branch, as before issue 18)

    @property
    def rows(self) -> tuple[str, ...]:
        """Every module whose output channels are copied (the conv first)."""
        return tuple(dict.fromkeys((self.conv, *self.channelwise, *self.producers, *self.writers)))


class _LeafTracer(fx.Tracer):
    """Keeps convs, norms and linear layers (timm's subclasses included) as single nodes."""

    def is_leaf_module(self, module: nn.Module, qualname: str) -> bool:
        kinds = nn.Conv2d | nn.BatchNorm2d | nn.Linear | nn.LayerNorm | nn.GroupNorm
        return isinstance(module, kinds) or super().is_leaf_module(module, qualname)


def _traced(root: nn.Module, shown: str, input_shape: tuple[int, ...]) -> fx.GraphModule:
    """The data flow in eval mode (no random branches), every node annotated with its tensor shape."""
    was_training = root.training
    root.eval()
    try:
        module = fx.GraphModule(root, _LeafTracer().trace(root))
        with torch.no_grad():
            ShapeProp(module).propagate(torch.zeros(SAMPLE_BATCH, *input_shape))
        return module
    except GraftError:
        raise
    except Exception as error:
        message = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
        raise GraftError(f"cannot follow the data flow of this model to widen {shown}: {message}") from None
    finally:
        root.train(was_training)


def _shape(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _describe(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        return f"{type(modules[str(node.target)]).__name__} ({str(node.target).removeprefix('backbone.')})"
    if node.op == "get_attr":
        return f"the parameter {str(node.target).removeprefix('backbone.')}"
    if node.op == "placeholder":
        return "the model's input"
    if node.op == "output":
        return "the model's output"
    target = node.target
    name = {torch.cat: "a concatenation", torch.flatten: "a flatten", F.layer_norm: "a layer norm"}.get(target)
    return name or f"{getattr(target, '__name__', str(target))} ({node.name})"


@dataclass
class _Walk:
    """The closure: every tensor that carries the widened channels, with the axis they are on."""

    modules: dict[str, nn.Module]
    channels: int
    shown: str
    batched: set[fx.Node]
    axes: dict[fx.Node, int] = field(default_factory=dict)
    work: list[tuple[fx.Node, str]] = field(default_factory=list)
    channelwise: list[str] = field(default_factory=list)
    consumers: list[str] = field(default_factory=list)
    producers: list[str] = field(default_factory=list)
    writers: list[str] = field(default_factory=list)
    parameters: list[tuple[str, int]] = field(default_factory=list)
    sums: set[fx.Node] = field(default_factory=set)

    def refuse(self, node: fx.Node, why: str = "") -> GraftError:
        reason = why or "where widening would change what the model computes"
        return GraftError(
            f"{self.shown}'s channels reach {_describe(node, self.modules)}, {reason}; widen a conv whose "
            "channels only reach per-channel layers, sums and other convs (e.g. layer1.0.conv1 in a ResNet)"
        )

    def add(self, node: fx.Node, axis: int, via: str) -> None:
        """`node`'s output carries the widened channels on `axis`; `via` is how it was reached (sum/product)."""
        shape = _shape(node)
        if shape is None or not -len(shape) <= axis < len(shape):
            raise self.refuse(node, "whose output graft cannot measure")
        axis %= len(shape)
        if shape[axis] != self.channels:
            raise self.refuse(node, f"which holds {shape[axis]} channels there, not {self.channels}")
        if node in self.axes:
            if self.axes[node] != axis:
                raise self.refuse(node, "on two different axes")
            return
        self.axes[node] = axis
        self.work.append((node, via))


def _batched(graph: fx.Graph) -> set[fx.Node]:
    """Nodes computed from the model's input (their first axis is the batch); the rest are parameters."""
    found: set[fx.Node] = set()
    for node in graph.nodes:
        if node.op == "placeholder" or any(a in found for a in node.all_input_nodes):
            found.add(node)
    return found


def widen_plan(root: nn.Module, name: str, input_shape: tuple[int, ...]) -> WidenPlan:
    """Follow conv `name`'s output channels through the model (fed `input_shape` = (C, H, W) images).

    Refused, naming the layer and why, when the channels reach anything whose meaning depends on the channel
    count or mixes channels with other dimensions: there, widening cannot preserve the function.
    """
    name = resolve_name(root, name)
    conv = root.get_submodule(name)
    shown = name.removeprefix("backbone.")
    if not isinstance(conv, nn.Conv2d) or conv.groups != 1:
        raise GraftError(f"{shown} is not a plain convolution (widening needs a Conv2d with groups=1)")
    module = _traced(root, shown, input_shape)
    graph = module.graph
    starts = [n for n in graph.nodes if n.op == "call_module" and n.target == name]
    if len(starts) != 1:
        raise GraftError(f"{shown} is used {len(starts)} times in the forward pass; widening needs exactly one use")
    walk = _Walk(dict(root.named_modules()), conv.out_channels, shown, _batched(graph))
    walk.add(starts[0], 1, "start")
    while walk.work:
        node, via = walk.work.pop()
        _backward(walk, node, via, is_start=node is starts[0])
        _forward(walk, node)
    _check_single_use(walk, graph)
    if not walk.consumers:
        raise GraftError(f"{shown}'s channels are not read by another conv; nothing downstream can absorb them")
    outside = [m for m in (*walk.consumers, *walk.writers, *walk.producers) if not m.startswith("backbone.")]
    if outside:
        raise GraftError(
            f"{shown}'s channels reach {outside[0]}, outside the timm backbone (a flatten head or an input stem), "
            "which graft does not widen"
        )
    unique = dict.fromkeys
    return WidenPlan(
        name,
        tuple(unique(walk.channelwise)),
        tuple(unique(walk.consumers)),
        tuple(unique(p for p in walk.producers if p != name)),
        tuple(unique(w for w in walk.writers if w != name and w not in walk.producers)),
        tuple(unique(walk.parameters)),
        len(walk.sums),
    )


def _check_single_use(walk: _Walk, graph: fx.Graph) -> None:
    """A module called twice shares its weights between two places; widening one would widen both."""
    touched = {*walk.channelwise, *walk.consumers, *walk.producers, *walk.writers}
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module" and node.target in touched:
            calls[str(node.target)] = calls.get(str(node.target), 0) + 1
    for target, count in calls.items():
        if count > 1:
            shown = target.removeprefix("backbone.")
            raise GraftError(f"widening {walk.shown} reaches {shown}, which runs {count} times (shared weights)")


def _backward(walk: _Walk, node: fx.Node, via: str, *, is_start: bool) -> None:
    """What makes `node`'s output carry the channels: a layer whose output rows are copied, a per-channel layer
    (its input must carry them too), or an operation whose operands must carry them."""
    axis = walk.axes[node]
    kind = _operation(node, walk.modules)
    if kind == "module":
        target = str(node.target)
        module = walk.modules[target]
        if (isinstance(module, nn.Conv2d) and module.groups == 1) or isinstance(module, nn.Linear):
            expected = 1 if isinstance(module, nn.Conv2d) else len(_shape(node) or ()) - 1
            if axis != expected:
                raise walk.refuse(node, "with the channels on another axis than its outputs")
            if not is_start:
                (walk.producers if via == "product" else walk.writers).append(target)
            return
        _per_channel(walk, node, module, axis)
        walk.add(_tensor_input(walk, node), axis, via)
        return
    if node.op == "get_attr":
        walk.parameters.append((str(node.target), axis))
        return
    if node.op == "placeholder":
        raise walk.refuse(node, "which no layer writes")
    if kind in ("sum", "product"):
        if kind == "sum":
            walk.sums.add(node)
        out = _shape(node) or ()
        for arg in _operands(node):
            shape = _shape(arg)
            if shape is None:
                raise walk.refuse(node, "with an operand graft cannot measure")
            arg_axis = axis - (len(out) - len(shape))
            if arg_axis >= 0 and shape[arg_axis] != 1:
                walk.add(arg, arg_axis, kind if via != "sum" else via)
        return
    if kind == "elementwise":
        walk.add(_tensor_input(walk, node), axis, via)
        return
    if kind in ("spatial", "reduction", "reshape", "permute"):
        source = _tensor_input(walk, node)
        walk.add(source, _input_axis(walk, node, source, axis), via)
        return
    raise walk.refuse(node, _why(node))


def _forward(walk: _Walk, node: fx.Node) -> None:
    """Every reader of `node`'s channels: a consumer, or an operation whose output carries them on."""
    axis = walk.axes[node]
    for user in node.users:
        if user.op == "output":
            raise walk.refuse(user, "whose width is fixed")
        kind = _operation(user, walk.modules)
        if kind == "module":
            target = str(user.target)
            module = walk.modules[target]
            reads = (isinstance(module, nn.Conv2d) and module.groups == 1 and axis == 1) or (
                isinstance(module, nn.Linear) and axis == len(_shape(node) or ()) - 1
            )
            if reads and user.args and user.args[0] is node:
                walk.consumers.append(target)
                continue
            if isinstance(module, nn.Conv2d | nn.Linear) and not _per_channel_conv(module, walk.channels):
                raise walk.refuse(user, "reading the channels on another axis than its inputs")
            _per_channel(walk, user, module, axis)
            walk.add(user, axis, "forward")
        elif kind in ("sum", "product"):
            walk.add(user, axis + len(_shape(user) or ()) - len(_shape(node) or ()), "forward")
        elif kind == "elementwise":
            walk.add(user, axis, "forward")
        elif kind in ("spatial", "reduction", "reshape", "permute"):
            walk.add(user, _output_axis(walk, user, node, axis), "forward")
        else:
            raise walk.refuse(user, _why(user))


def _why(node: fx.Node) -> str:
    if node.target is torch.cat:
        return "which joins them with other channels (no copy rule keeps a concatenation exact)"
    if node.target is F.layer_norm:
        return "which normalises over the channels (copies would change its mean and variance)"
    if node.target in (getattr, operator.getitem) or node.target in ("size", "dim"):
        return "which reads the tensor's shape"
    return ""


def _per_channel_conv(module: nn.Module, channels: int) -> bool:
    return (
        isinstance(module, nn.Conv2d)
        and module.groups == module.in_channels == module.out_channels == channels
        and module.groups > 1
    )


def _per_channel(walk: _Walk, node: fx.Node, module: nn.Module, axis: int) -> None:
    """Check a module acts on each channel alone (else refuse it by name); note the ones with weights."""
    target = str(node.target)
    if _per_channel_conv(module, walk.channels) or isinstance(module, nn.BatchNorm2d):
        if axis != 1:
            raise walk.refuse(node, "with the channels off axis 1")
        walk.channelwise.append(target)
        return
    if isinstance(module, nn.LayerNorm | nn.GroupNorm):
        raise walk.refuse(node, "which normalises over the channels (copies would change its mean and variance)")
    if isinstance(module, nn.Conv2d):
        raise walk.refuse(node, "a grouped convolution (each group would need its own copies)")
    raise walk.refuse(node)


def _operation(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    """What an fx call does to a channel axis: sum | product | elementwise | spatial | reduction | reshape |
    permute | module (a layer with weights or a norm: see `_per_channel`) | other."""
    target = node.target
    if node.op == "call_module":
        module = modules[str(target)]
        if isinstance(module, _ELEMENTWISE_MODULES):
            return "elementwise"
        if isinstance(module, _SPATIAL_MODULES):
            return "spatial"
        if isinstance(module, nn.Flatten):
            return "reshape"
        return "module"
    if node.op == "call_function":
        if target in _SUMS or target in _PRODUCTS:
            return "sum" if target in _SUMS else "product"
        if target in _ELEMENTWISE_FUNCTIONS:
            return "elementwise"
        if target in _SPATIAL_FUNCTIONS:
            return "spatial"
        if target is torch.flatten:
            return "reshape"
        if target is torch.mean:
            return "reduction"
        return "other"
    if node.op == "call_method":
        if target in _SUM_METHODS or target in _PRODUCT_METHODS:
            return "sum" if target in _SUM_METHODS else "product"
        if target in _ELEMENTWISE_METHODS:
            return "elementwise"
        if target in _REDUCTIONS:
            return "reduction"
        if target in _RESHAPES:
            return "reshape"
        if target in ("permute", "transpose"):
            return "permute"
    return "other"


def _operands(node: fx.Node) -> list[fx.Node]:
    return [a for a in (*node.args, *node.kwargs.values()) if isinstance(a, fx.Node)]


def _tensor_input(walk: _Walk, node: fx.Node) -> fx.Node:
    first = node.args[0] if node.args else next(iter(node.kwargs.values()), None)
    if not isinstance(first, fx.Node):
        raise walk.refuse(node, "with no tensor input")
    return first


def _output_axis(walk: _Walk, node: fx.Node, source: fx.Node, axis: int) -> int:
    """Where `node` (a pool, reduction, reshape or permute of `source`) puts the channel axis, or a refusal."""
    mapped = _axis_map(walk, node, source)
    if axis not in mapped:
        raise walk.refuse(node, "which mixes them with other dimensions")
    return mapped[axis]


def _input_axis(walk: _Walk, node: fx.Node, source: fx.Node, axis: int) -> int:
    inverse = {out: inp for inp, out in _axis_map(walk, node, source).items()}
    if axis not in inverse:
        raise walk.refuse(node, "which mixes them with other dimensions")
    return inverse[axis]


def _axis_map(walk: _Walk, node: fx.Node, source: fx.Node) -> dict[int, int]:
    """{input axis: output axis} for the axes `node` keeps whole (a channel axis may only be on one of them)."""
    kind = _operation(node, walk.modules)
    before, after = _shape(source), _shape(node)
    if before is None or after is None:
        return {}
    if kind == "spatial":
        return {1: 1} if len(before) == len(after) == 4 else {}
    if kind == "permute":
        dims = _int_args(node)
        if node.target == "transpose" and len(dims) == 2:
            a, b = (d % len(before) for d in dims)
            order = list(range(len(before)))
            order[a], order[b] = order[b], order[a]
        else:
            order = [d % len(before) for d in dims]
        if sorted(order) != list(range(len(before))):
            return {}
        return {source_axis: i for i, source_axis in enumerate(order)}
    if kind == "reduction":
        dims = _reduced(node, len(before))
        kept = [d for d in range(len(before)) if d not in dims]
        if len(after) == len(before):
            return {d: d for d in kept}
        return {d: i for i, d in enumerate(kept)} if len(kept) == len(after) else {}
    if kind == "reshape":
        return _reshape_map(before, after, node in walk.batched)
    return {}


def _int_args(node: fx.Node) -> list[int]:
    values = list(node.args[1:]) or list(node.kwargs.get("dims", ()))
    if len(values) == 1 and isinstance(values[0], tuple | list):
        values = list(values[0])
    return [int(v) for v in values if isinstance(v, int)]


def _reduced(node: fx.Node, ndim: int) -> set[int]:
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    if dims is None:
        return set(range(ndim))
    dims = dims if isinstance(dims, tuple | list) else (dims,)
    return {int(d) % ndim for d in dims if isinstance(d, int)} if all(isinstance(d, int) for d in dims) else set()


def _reshape_map(before: tuple[int, ...], after: tuple[int, ...], batched: bool) -> dict[int, int]:
    """A reshape keeps an axis whole when that axis is the only one (besides the batch) with more than one
    element on either side: (N, C, 1, 1) ↔ (N, C), (C,) ↔ (1, C, 1, 1). Anything else mixes dimensions."""
    skip = 1 if batched else 0
    if batched and (not before or not after or before[0] != after[0]):
        return {}
    wide_before = [i for i in range(skip, len(before)) if before[i] != 1]
    wide_after = [i for i in range(skip, len(after)) if after[i] != 1]
    if len(wide_before) == len(wide_after) == 1 and before[wide_before[0]] == after[wide_after[0]]:
        return {wide_before[0]: wide_after[0]}
    return {}


def widen_structure(root: nn.Module, plan: WidenPlan, width: int) -> None:
    """Resize every module of `plan` for `width` channels (fresh values; surgery fills them)."""
    conv = root.get_submodule(plan.conv)
    if width <= conv.out_channels:
        raise GraftError(f"widen {plan.conv.removeprefix('backbone.')} to more than its {conv.out_channels} channels")
    channels = conv.out_channels
    for name in plan.rows:
        module = root.get_submodule(name)
        if isinstance(module, nn.BatchNorm2d):
            module.num_features = width
            for key in ("weight", "bias", "running_mean", "running_var"):
                _replace(module, key, width)
        else:
            depthwise = _per_channel_conv(module, channels)
            _resize_out(module, width)
            if depthwise:
                module.in_channels = module.groups = width
    for name, axis in plan.parameters:
        owner, _, key = name.rpartition(".")
        _replace(root.get_submodule(owner) if owner else root, key, width, axis)
    for name in plan.consumers:
        module = root.get_submodule(name)
        if isinstance(module, nn.Linear):
            module.in_features = width
        else:
            module.in_channels = width
        shape = list(module.weight.shape)
        shape[1] = width
        module.weight = nn.Parameter(torch.zeros(shape, dtype=module.weight.dtype))


def _resize_out(module: nn.Module, width: int) -> None:
    if isinstance(module, nn.Linear):
        module.out_features = width
    else:
        module.out_channels = width
    for key in ("weight", "bias", "offset"):
        if getattr(module, key, None) is not None:
            _replace(module, key, width)


def _replace(module: nn.Module, key: str, rows: int, axis: int = 0) -> None:
    old = getattr(module, key)
    if old is None:
        return
    shape = list(old.shape)
    shape[axis] = rows
    fresh = torch.ones if key == "running_var" else torch.zeros
    value = fresh(shape, dtype=old.dtype)
    if isinstance(old, nn.Parameter):
        setattr(module, key, nn.Parameter(value, requires_grad=old.requires_grad))
    else:
        module.register_buffer(key, value)


def copies(width: int, channels: int, generator: torch.Generator) -> torch.Tensor:
    """Which old channel each of `width` new ones copies: the old ones in place, then a seeded random choice."""
    extra = torch.randint(channels, (width - channels,), generator=generator)
    return torch.cat([torch.arange(channels), extra])


__all__ = ["SAMPLE_BATCH", "WidenPlan", "copies", "widen_plan", "widen_structure"]
