"""Loading weights by name and shape, with a report of what happened to every tensor.

Files are read without pickle: safetensors, or a PyTorch state dict through `torch.load(weights_only=True)`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from timm.models._manipulate import adapt_input_conv
from torch import nn

from graft.errors import GraftError
from graft.record import WEIGHTS_FILE


@dataclass
class TransferReport:
    """What a weight transfer did, tensor by tensor; saved in the bundle's provenance."""

    source: str = ""
    loaded: list[str] = field(default_factory=list)
    adapted: list[dict[str, str]] = field(default_factory=list)  # {"name", "how"}
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"name", "reason"} (source tensors)
    initialised: list[str] = field(default_factory=list)  # target tensors left at their fresh init

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"{len(self.loaded)} loaded, {len(self.adapted)} adapted, "
            f"{len(self.skipped)} skipped, {len(self.initialised)} newly initialised"
        )

    def lines(self, limit: int = 8) -> list[str]:
        """Human-readable lines for the console: the summary, then what was not simply loaded."""
        out = [f"weights from {self.source}: {self.summary()}"]
        out += [f"  adapted  {a['name']}: {a['how']}" for a in self.adapted[:limit]]
        out += [f"  skipped  {s['name']}: {s['reason']}" for s in self.skipped[:limit]]
        if self.initialised:
            shown = ", ".join(self.initialised[:limit]) + (" …" if len(self.initialised) > limit else "")
            out.append(f"  new      {shown}")
        return out


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a .safetensors file, a graft bundle directory, or a PyTorch state dict (no pickle)."""
    path = Path(path)
    if path.is_dir() and (path / WEIGHTS_FILE).is_file():
        path = path / WEIGHTS_FILE
    if not path.is_file():
        raise GraftError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        raise GraftError(
            f"cannot read weights from {path}: not a safetensors file or a PyTorch state dict of tensors "
            "(graft never unpickles code)"
        ) from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise GraftError(f"{path} does not hold a state dict of tensors")
    return state


_KEY_RULES = (
    lambda k: k,
    lambda k: k.removeprefix("module."),
    lambda k: k.removeprefix("backbone."),
    lambda k: "backbone." + k.removeprefix("module."),
)


def _align_prefixes(source: dict[str, torch.Tensor], target_keys: set[str]) -> dict[str, torch.Tensor]:
    """Rename source keys by the prefix rule that matches most target names (DDP `module.`, `backbone.`)."""
    best = max(_KEY_RULES, key=lambda rule: sum(rule(k) in target_keys for k in source))
    return {best(key): value for key, value in source.items()}


def transfer_weights(
    target: nn.Module,
    source: dict[str, torch.Tensor],
    *,
    source_name: str = "",
    first_conv: str | None = None,
) -> TransferReport:
    """Copy every source tensor whose name and shape match into `target`, in place.

    The first conv's kernel is adapted when only its input channels differ (timm's rule: RGB → gray by sum,
    other counts by repeating and rescaling). Everything else that does not match is skipped with a reason.
    """
    report = TransferReport(source=source_name)
    own = target.state_dict()
    source = _align_prefixes(source, set(own))
    conv_key = f"{first_conv}.weight" if first_conv else None
    filled: dict[str, torch.Tensor] = {}
    for key, value in source.items():
        if key not in own:
            report.skipped.append({"name": key, "reason": "no tensor of that name in the model"})
            continue
        want = own[key]
        if tuple(value.shape) == tuple(want.shape):
            filled[key] = value.to(want.dtype)
            report.loaded.append(key)
        elif (
            key == conv_key
            and value.ndim == 4
            and value.shape[0] == want.shape[0]
            and value.shape[2:] == want.shape[2:]
        ):
            filled[key] = adapt_input_conv(want.shape[1], value.float()).to(want.dtype)
            how = "summed RGB into one channel" if want.shape[1] == 1 else "channels repeated and rescaled"
            report.adapted.append({"name": key, "how": f"{value.shape[1]}→{want.shape[1]} input channels ({how})"})
        else:
            shapes = f"{tuple(value.shape)} in the file, {tuple(want.shape)} in the model"
            report.skipped.append({"name": key, "reason": f"shape differs: {shapes}"})
    target.load_state_dict(filled, strict=False)
    # Parameters and BN running statistics count as initialised; the `num_batches_tracked` counters do not.
    report.initialised = [k for k in own if k not in filled and not k.endswith("num_batches_tracked")]
    return report
