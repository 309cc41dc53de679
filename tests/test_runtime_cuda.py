"""Precision `auto` on a GPU picks bfloat16 only where the GPU has it natively (compute capability 8.0+).

torch.cuda.is_bf16_supported() also answers yes on Volta and Turing GPUs (V100, T4), where bfloat16 is only
emulated and runs slower than float32. These tests run on a CPU with torch.cuda's answers replaced, as a GPU of
each generation would give them.
"""

from __future__ import annotations

import pytest
import torch

from graft.errors import GraftError
from graft.training.config import make_config
from graft.training.distributed import World
from graft.training.runtime import resolve_runtime


@pytest.fixture
def gpu(monkeypatch):
    """A visible CUDA GPU of a chosen compute capability, as torch.cuda reports it."""

    def choose(capability: tuple[int, int]) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        # torch's own answer on a pre-Ampere GPU: yes, counting emulation (a bfloat16 tensor can be created there).
        monkeypatch.setattr(
            torch.cuda, "is_bf16_supported", lambda including_emulation=True: capability[0] >= 8 or including_emulation
        )
        monkeypatch.setattr(torch.version, "hip", None)

    return choose


def _runtime(**settings):
    return resolve_runtime(make_config(**settings), World())


def test_auto_uses_bfloat16_on_an_ampere_or_later_gpu(gpu):
    gpu((9, 0))  # H100/H200
    runtime = _runtime(precision="auto")
    assert runtime.device == torch.device("cuda")
    assert runtime.bf16


def test_auto_stays_in_float32_where_bfloat16_is_only_emulated(gpu):
    gpu((7, 5))  # Turing (T4)
    runtime = _runtime(precision="auto")
    assert runtime.device == torch.device("cuda")
    assert not runtime.bf16


def test_bf16_is_refused_where_the_gpu_only_emulates_it(gpu):
    gpu((7, 0))  # Volta (V100)
    with pytest.raises(GraftError, match="no native bfloat16"):
        _runtime(precision="bf16", device="cuda")
