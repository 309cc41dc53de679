"""Deeper and wider models that start out computing what the trained model computes.

- Deeper: after a named stage, insert a residual block whose added branch starts at zero (BN scale and shift at
  0, as timm's zero_init_last does), so the identity holds in eval *and* train mode, for any BatchNorm statistics,
  and the first optimizer step moves it only a little. `relu` blocks, ReLU(x + BN(Conv(x))), are exact after a
  stage that ends in a ReLU (ResNets, DenseNets…; the certificate reports the stage's smallest output on the
  probe); `residual` blocks, x + BN(Conv(x)), after any stage. (Before issue 20 `relu` inserted Net2DeeperNet's
  Conv+BN+ReLU chain with a Dirac kernel and BN statistics from the probe: exact in eval mode only, it broke at
  the first training step. Bundles recording it still load as they were.)
- Wider (Net2WiderNet): a conv gets extra output channels copied from existing ones; per-channel layers after
  it (BatchNorm, activations, depthwise convs) copy along, and the convs that read the channels divide each
  copy's input weights by the number of copies; a squeeze-excitation gate multiplying the channels has its
  expanding conv copied along. Channels that reach a residual sum widen the whole residual stream with them
  (every layer writing into it copies the same rows). Exact for any input. Channels that meet a concatenation,
  a LayerNorm over them or a flatten are refused: no copy rule keeps those exact (graft.models.widening).
- Deeper for transformers: a copy of a ViT block with attn.proj and mlp.fc2 at zero, an identity on the stream.
Widened BatchNorms see copies of the same channels, so their batch statistics are copies too: exact in train mode.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from torch import nn

from graft.bundle import Bundle
from graft.errors import GraftError
from graft.models.edits import insert_block, is_transformer_block, make_block, resolve_name, transformer_block
from graft.models.factory import GraftModel, build_model
from graft.models.widening import copies, widen_plan, widen_structure
from graft.surgery.certificate import Views
from graft.surgery.details import DeepenDetails, WidenDetails


def _rebuilt(bundle: Bundle, edited: GraftModel, edit: dict) -> Bundle:
    """The edited model as a bundle, checked to rebuild from its record alone (what `graft.load` will do)."""
    arch = dataclasses.replace(bundle.architecture, edits=[*bundle.architecture.edits, edit])
    model = build_model(arch, bundle.spec)
    model.load_state_dict(edited.state_dict(), strict=True)
    return dataclasses.replace(bundle, model=model.eval(), architecture=arch, path=None)


def _stage_output(model: GraftModel, name: str, probe: torch.Tensor) -> torch.Tensor:
    captured: list[torch.Tensor] = []
    handle = model.get_submodule(name).register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        with torch.no_grad():
            model(probe)
    finally:
        handle.remove()
    if not captured or not isinstance(captured[0], torch.Tensor):
        raise GraftError(f"{name.removeprefix('backbone.')} does not run in the forward pass")
    return captured[0]


# What `--block` names → the block kind recorded in the bundle's edits (models/edits.py builds it from that).
BLOCKS = {"relu": "relu-residual", "residual": "residual", "transformer": "transformer"}


def insert_identity_block(
    bundle: Bundle, after: str, probe_inputs: torch.Tensor, kind: str | None = None, *, seed: int = 0
) -> tuple[Bundle, Views, DeepenDetails]:
    """A new bundle with an identity-initialised block after stage `after` (probe inputs: normalised tensors).

    `kind` None picks `transformer` after a transformer block (token outputs), else `relu`.
    """
    if kind is not None and kind not in BLOCKS:
        raise GraftError(f"unknown block {kind!r}; choose one of {', '.join(BLOCKS)}")
    model = copy.deepcopy(bundle.model).eval()
    name = resolve_name(model, after)
    output = _stage_output(model, name, probe_inputs)
    if kind is None:
        kind = "transformer" if output.ndim == 3 and _ends_in_transformer_block(model, name) else "relu"
    if kind == "transformer":
        return _insert_transformer_block(bundle, model, name, output)
    if output.ndim != 4:
        raise GraftError(
            f"{after} outputs {tuple(output.shape[1:])}, not a feature map (C, H, W); a conv block cannot follow it"
            + (" (after a transformer block, use --block transformer)" if output.ndim == 3 else "")
        )
    channels = int(output.shape[1])
    block = make_block(BLOCKS[kind], channels)
    with torch.no_grad():  # the added branch starts at zero; its conv gets a seeded He init so it can learn
        generator = torch.Generator().manual_seed(seed)
        fan_in = block.conv.weight[0].numel()
        block.conv.weight.copy_(torch.randn(block.conv.weight.shape, generator=generator) * (2 / fan_in) ** 0.5)
        block.bn.weight.zero_()
        block.bn.bias.zero_()
    block_name = insert_block(model, name, block)
    edit = {"op": "insert", "after": name, "block": BLOCKS[kind], "channels": channels, "name": block_name}
    smallest = float(output.min())
    details: DeepenDetails = {
        "after": name.removeprefix("backbone."),
        "block": kind,
        "channels": channels,
        "module": block_name.removeprefix("backbone."),
        "stage_output_min": smallest,
        "claim": "exact" if kind == "residual" or smallest >= 0 else "approximate (the stage outputs negatives)",
    }
    return _rebuilt(bundle, model, edit), Views(), details


def _ends_in_transformer_block(model: nn.Module, name: str) -> bool:
    module = model.get_submodule(name)
    if isinstance(module, nn.Sequential) and len(module):
        module = module[-1]
    return is_transformer_block(module)


def _insert_transformer_block(
    bundle: Bundle, model: GraftModel, name: str, output: torch.Tensor
) -> tuple[Bundle, Views, DeepenDetails]:
    """A copy of the transformer block at `name` whose residual branches end in zero: attn.proj and mlp.fc2
    (weights and biases) start at 0, so x + 0 + 0 = x on the residual stream, in eval and train mode.

    The rest is copied from its neighbour (a trained start, not a random one); a LayerScale keeps its copied
    gamma: zeroing it too would leave the projections with no gradient, and the block could never learn.
    """
    if output.ndim != 3:
        raise GraftError(
            f"{name.removeprefix('backbone.')} outputs {tuple(output.shape[1:])}, not tokens (N, D); "
            "a transformer block cannot follow it"
        )
    block = transformer_block(model, name)
    with torch.no_grad():
        for projection in (block.attn.proj, block.mlp.fc2):
            projection.weight.zero_()
            if projection.bias is not None:
                projection.bias.zero_()
        kept = block.eval()(output)
    if not torch.equal(kept, output):  # e.g. a post-norm block: norm(0) is its bias, not zero
        raise GraftError(
            f"{type(block).__name__} after {name.removeprefix('backbone.')} is no identity with zero output "
            f"projections (max |Δ| {float((kept - output).abs().max()):.2e}: its branches do not end in "
            "attn.proj and mlp.fc2); graft cannot deepen it exactly"
        )
    block_name = insert_block(model, name, block)
    channels = int(output.shape[-1])
    edit = {"op": "insert", "after": name, "block": "transformer", "channels": channels, "name": block_name}
    details: DeepenDetails = {
        "after": name.removeprefix("backbone."),
        "block": "transformer",
        "channels": channels,
        "module": block_name.removeprefix("backbone."),
        "stage_output_min": float(output.min()),
        "claim": "exact",
    }
    return _rebuilt(bundle, model, edit), Views(), details


def widen_layer(bundle: Bundle, layer: str, width: int, *, seed: int = 0) -> tuple[Bundle, Views, WidenDetails]:
    """A new bundle where conv `layer` has `width` output channels and computes the same function; when its
    channels reach a residual sum, the whole residual stream is widened with it (see graft.models.widening)."""
    model = copy.deepcopy(bundle.model).eval()
    plan = widen_plan(model, layer, (bundle.spec.channels, *bundle.spec.size))
    channels = model.get_submodule(plan.conv).out_channels
    if width <= channels:
        raise GraftError(f"{layer} already has {channels} output channels; widen to more than that")
    mapping = copies(width, channels, torch.Generator().manual_seed(seed))
    counts = torch.bincount(mapping, minlength=channels)[mapping].double()
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    widen_structure(model, plan, width)
    _check_runs(model, bundle, layer)
    state = model.state_dict()
    for module_name in plan.rows:  # output channels (and a depthwise conv's filters): copied
        for key in _own_tensors(model, module_name):
            if before[key].ndim >= 1 and before[key].shape[0] == channels:
                state[key] = before[key][mapping]
    for name, axis in plan.parameters:  # a LayerScale-like vector scaling the channels: copied
        state[name] = before[name].index_select(axis, mapping)
    for module_name in plan.consumers:  # input columns: each copy reads its share, so their sum is unchanged
        key = f"{module_name}.weight"
        rows = state[key] if module_name in plan.rows else before[key]  # a layer both writing and reading
        shape = (1, -1) + (1,) * (rows.ndim - 2)
        state[key] = (rows[:, mapping].double() / counts.view(shape)).to(rows.dtype)
    model.load_state_dict(state, strict=True)
    edit = {"op": "widen", "layer": plan.conv, "width": width}
    short = [n.removeprefix("backbone.") for n in plan.writers]
    details: WidenDetails = {
        "layer": plan.conv.removeprefix("backbone."),
        "from": channels,
        "to": width,
        "per_channel_layers": [n.removeprefix("backbone.") for n in plan.channelwise],
        "consumers": [n.removeprefix("backbone.") for n in plan.consumers],
        "gates": [n.removeprefix("backbone.") for n in plan.producers],
        "residual_stream": short,
        "residual_sums": plan.sums,
        "claim": "exact",
    }
    return _rebuilt(bundle, model, edit), Views(), details


def _own_tensors(model: nn.Module, name: str) -> list[str]:
    """The state-dict keys of module `name`'s own parameters and buffers (not its children's)."""
    module = model.get_submodule(name)
    own = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
    return [f"{name}.{key}" for key, value in own if value is not None]


def _check_runs(model: nn.Module, bundle: Bundle, layer: str) -> None:
    """A widened structure that no longer runs is a widening graft cannot do, not a too-small input."""
    x = torch.zeros(2, bundle.spec.channels, *bundle.spec.size)
    try:
        with torch.no_grad():
            model.eval()(x)
    except (RuntimeError, ValueError, AssertionError) as error:
        raise GraftError(
            f"widening {layer} breaks the model's forward pass ({str(error).splitlines()[0][:120]}); "
            "widen a conv inside a block instead (e.g. layer1.0.conv1 in a ResNet)"
        ) from None
