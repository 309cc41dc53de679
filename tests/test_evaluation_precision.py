"""Evaluation computes float32 metrics in IEEE float32, not TF32.

PyTorch runs cuDNN convolutions on a GPU in TF32 by default (`torch.backends.cudnn.conv.fp32_precision` is
"tf32"): validation and test accuracy computed there would come from 10-bit-mantissa products, not the float32
the bundle records them as and that `graft eval` on a CPU reproduces. These tests run on a CPU: they check the
precision flags the model's forward pass sees, which is what cuDNN and cuBLAS read on a GPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from graft.data.memory import images_from_arrays
from graft.evaluation import evaluate_model
from graft.spec import InputSpec

SPEC = InputSpec(size=(8, 8), channels=1, mode="fold", mean=(0.0,), std=(1.0,))
CONV, MATMUL = torch.backends.cudnn.conv, torch.backends.cuda.matmul


def _flags() -> tuple[str, str]:
    return CONV.fp32_precision, MATMUL.fp32_precision


class _RecordsPrecision(nn.Module):
    """Answers class 0 for every image and records the precision flags in force during each forward pass."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.seen: list[tuple[str, str]] = []
        self.fail = fail

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(_flags())
        if self.fail:
            raise RuntimeError("the model broke")
        return torch.tensor([[1.0, 0.0]]).repeat(len(x), 1)


@pytest.fixture
def tf32_allowed():
    """The flags as a process that allows TF32 (PyTorch's default for cuDNN convolutions) has them."""
    before = _flags()
    CONV.fp32_precision = MATMUL.fp32_precision = "tf32"
    yield
    CONV.fp32_precision, MATMUL.fp32_precision = before


def _images(n: int = 6):
    rng = np.random.default_rng(0)
    return images_from_arrays(rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8), np.arange(n) % 2, ["a", "b"])


def test_evaluation_runs_in_ieee_float32_and_restores_the_flags(tf32_allowed):
    model = _RecordsPrecision()
    assert _flags() == ("tf32", "tf32")  # the fixture took effect: the assertion below can fail
    result = evaluate_model(model, SPEC, _images(), batch_size=4, workers=0)
    assert result.accuracy == pytest.approx(0.5)  # the model did run on every batch
    assert model.seen == [("ieee", "ieee")] * 2
    assert _flags() == ("tf32", "tf32")  # training after validation gets its own setting back


def test_flags_are_restored_when_evaluation_fails(tf32_allowed):
    model = _RecordsPrecision(fail=True)
    with pytest.raises(RuntimeError, match="the model broke"):
        evaluate_model(model, SPEC, _images(), batch_size=4, workers=0)
    assert model.seen == [("ieee", "ieee")]
    assert _flags() == ("tf32", "tf32")
