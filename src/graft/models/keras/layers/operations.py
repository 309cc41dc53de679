"""Keras 3 operations saved as layers: `x + 3.0`, `ops.maximum(x, c)`, `ops.reshape`, `ops.mean(x, axis)`, …

Keras 3 records a tensor operation in a functional model as a layer of module `keras.src.ops.*` whose class is
the operation (`Add`, `Multiply`, `Reshape`, …), with its constants among the call's arguments, not in its config.
A class name like `Add` is therefore NOT the merge layer `keras.layers.Add`: `graph.parse_nodes` gives these
nodes the type `ops.<Class>` and their operands (`{"input": i}` for the i-th tensor, `{"const": c}` for a number),
so a constant is never dropped, and an operation graft does not know is refused by its name.

Every operation runs in Keras's layout: rank-4 operands are turned NHWC, the operation applies with Keras's axes
and broadcasting, and a rank-4 result is turned back to NCHW.
"""

from __future__ import annotations

import math
from numbers import Real

import torch
import torch.nn.functional as F
from torch import nn

from graft.models.keras.layers.base import LayerKind, Weights, register

OPERANDS = "_operands"  # node-config keys `graph.parse_nodes` adds: the call's operands and keyword arguments
KWARGS = "_kwargs"


def _hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    return F.relu6(x + 3.0) / 6.0


BINARY = {
    "Add": torch.add,
    "Subtract": torch.sub,
    "Multiply": torch.mul,
    "Divide": torch.true_divide,
    "TrueDivide": torch.true_divide,
    "Maximum": torch.maximum,
    "Minimum": torch.minimum,
    "Power": torch.pow,
}
UNARY = {
    "Negative": torch.neg,
    "Absolute": torch.abs,
    "Abs": torch.abs,
    "Sqrt": torch.sqrt,
    "Square": torch.square,
    "Exp": torch.exp,
    "Log": torch.log,
    "Tanh": torch.tanh,
    "Sigmoid": torch.sigmoid,
    "Relu": F.relu,
    "Relu6": F.relu6,
    "Silu": F.silu,
    "Swish": F.silu,
    "Softplus": F.softplus,
    "HardSigmoid": _hard_sigmoid,
    "HardSilu": lambda x: x * _hard_sigmoid(x),
    "HardSwish": lambda x: x * _hard_sigmoid(x),
}
REDUCTIONS = {"Mean": torch.mean, "Sum": torch.sum, "Max": torch.amax, "Min": torch.amin, "Average": torch.mean}
OTHER = ("Clip", "Gelu", "LeakyRelu", "Elu", "Softmax", "Reshape", "Transpose", "Squeeze", "ExpandDims", "Concatenate")
OPERATIONS = (*BINARY, *UNARY, *REDUCTIONS, *OTHER)

# The settings each operation reads from its config (and their Keras defaults); anything else there is refused.
_SETTINGS: dict[str, dict[str, object]] = {
    **{op: {"axis": None, "keepdims": False} for op in REDUCTIONS},
    "Average": {"axis": None},
    "Max": {"axis": None, "keepdims": False, "initial": None},
    "Min": {"axis": None, "keepdims": False, "initial": None},
    "Clip": {"x_min": None, "x_max": None},
    "Gelu": {"approximate": True},
    "LeakyRelu": {"negative_slope": 0.2},
    "Elu": {"alpha": 1.0},
    "Softmax": {"axis": -1},
    "Reshape": {"newshape": None},
    "Transpose": {"axes": None},
    "Squeeze": {"axis": None},
    "ExpandDims": {"axis": None},
    "Concatenate": {"axis": 0},
}


def _arity(op: str) -> int:
    return 2 if op in BINARY else 1


def _operand_problems(op: str, operands: list, kwargs: dict) -> list[str]:
    problems = [f"the argument {o['bad']}" for o in operands if "bad" in o]
    if op == "Concatenate":
        if len(operands) != 1 or "inputs" not in operands[0]:
            problems.append("arguments other than one list of tensors")
    elif len(operands) != _arity(op):
        problems.append(f"{len(operands)} arguments (expected {_arity(op)})")
    elif not any("input" in o for o in operands):
        problems.append("no tensor argument")
    elif _arity(op) == 1 and "input" not in operands[0]:
        problems.append("a constant where the tensor goes")
    problems += [f"the argument {key}={value!r}"[:80] for key, value in kwargs.items() if value is not None]
    return problems


class OperationKind(LayerKind):
    """One Keras operation (`self.type` is `ops.<Class>`)."""

    @property
    def op(self) -> str:
        return self.type.removeprefix("ops.")

    def problems(self, config: dict) -> list[str]:
        known = {"name", OPERANDS, KWARGS, *_SETTINGS.get(self.op, {})}
        problems = [f"the setting {key}={config[key]!r}" for key in config if key not in known]
        problems += _operand_problems(self.op, config.get(OPERANDS, []), config.get(KWARGS, {}))
        if self.op in ("Max", "Min") and config.get("initial") is not None:
            problems.append(f"initial={config['initial']!r}")
        if self.op == "Reshape" and not isinstance(config.get("newshape"), list | tuple):
            problems.append(f"newshape={config.get('newshape')!r}")
        return problems

    def convert(self, config: dict, weights: Weights, major: int, layer: str) -> tuple[dict, dict]:
        settings = {key: config.get(key, default) for key, default in _SETTINGS.get(self.op, {}).items()}
        operands = [
            {"inputs": list(o["inputs"])} if "inputs" in o else {"input": o["input"]} if "input" in o else o
            for o in config.get(OPERANDS, [])
        ]
        return {"op": self.op, "operands": operands, **settings}, {}

    def build(self, cfg: dict) -> nn.Module:
        return KOperation(cfg)


register(*(f"ops.{op}" for op in OPERATIONS))(OperationKind)


def to_keras(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1) if x.ndim == 4 else x


def from_keras(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2) if x.ndim == 4 else x


def _axes(axis: object) -> int | tuple[int, ...] | None:
    if axis is None:
        return None
    return tuple(int(a) for a in axis) if isinstance(axis, list | tuple) else int(axis)


class KOperation(nn.Module):
    def __init__(self, cfg: dict) -> None:
        super().__init__()
        self.op = cfg["op"]
        self.operands = cfg["operands"]
        self.cfg = {k: v for k, v in cfg.items() if k not in ("op", "operands")}

    def _args(self, xs: tuple[torch.Tensor, ...]) -> list:
        out: list = []
        for operand in self.operands:
            if "inputs" in operand:
                out.append([to_keras(xs[i]) for i in operand["inputs"]])
            elif "input" in operand:
                out.append(to_keras(xs[operand["input"]]))
            else:
                value = operand["const"]
                like = next(x for x in xs)
                out.append(torch.tensor(float(value), dtype=like.dtype, device=like.device))
        return out

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        args, cfg, op = self._args(xs), self.cfg, self.op
        if op in BINARY:
            out = BINARY[op](args[0], args[1])
        elif op in UNARY:
            out = UNARY[op](args[0])
        elif op in REDUCTIONS:
            axis = _axes(cfg.get("axis"))
            keepdims = bool(cfg.get("keepdims", False))
            if axis is None:
                out = REDUCTIONS[op](args[0])
                out = out.reshape([1] * args[0].ndim) if keepdims else out
            else:
                out = REDUCTIONS[op](args[0], dim=axis, keepdim=keepdims)
        elif op == "Clip":
            out = torch.clamp(args[0], cfg.get("x_min"), cfg.get("x_max"))
        elif op == "Gelu":
            out = F.gelu(args[0], approximate="tanh" if cfg.get("approximate", True) else "none")
        elif op == "LeakyRelu":
            out = F.leaky_relu(args[0], float(cfg.get("negative_slope", 0.2)))
        elif op == "Elu":
            out = F.elu(args[0], float(cfg.get("alpha", 1.0)))
        elif op == "Softmax":
            axis = _axes(cfg.get("axis", -1))
            out = torch.softmax(args[0], dim=axis) if isinstance(axis, int) else _softmax_axes(args[0], axis)
        elif op == "Reshape":
            shape = [int(v) if v is not None else -1 for v in cfg["newshape"]]
            out = args[0].reshape(shape)
        elif op == "Transpose":
            axes = cfg.get("axes")
            out = args[0].permute(*axes) if axes is not None else args[0].permute(*reversed(range(args[0].ndim)))
        elif op == "Squeeze":
            axis = _axes(cfg.get("axis"))
            out = args[0].squeeze() if axis is None else args[0].squeeze(axis)
        elif op == "ExpandDims":
            out = args[0].unsqueeze(int(cfg["axis"]))
        elif op == "Concatenate":
            out = torch.cat(args[0], dim=int(cfg.get("axis", 0)))
        else:  # the registry and this table are one list; a description naming another op is damaged
            raise ValueError(f"unknown operation {op!r}")
        return from_keras(out)


def _softmax_axes(x: torch.Tensor, axes: tuple[int, ...] | None) -> torch.Tensor:
    dims = tuple(range(x.ndim)) if axes is None else axes
    return torch.exp(x - torch.logsumexp(x, dim=dims, keepdim=True))


def is_number(value: object) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(float(value))
