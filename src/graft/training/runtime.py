"""Where and how the arithmetic runs: device, threads, bfloat16 autocast and memory layout.

Chosen once per run from the settings and the machine, recorded in the run's metrics, and applied the same way
to training and evaluation.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from graft.cpus import available_cpus
from graft.errors import GraftError
from graft.training.config import TrainConfig
from graft.training.distributed import World


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    bf16: bool
    channels_last: bool
    threads: int
    fell_back: str | None = None  # why a bfloat16 run continued in float32

    def autocast(self) -> contextlib.AbstractContextManager:
        """bfloat16 autocast (no loss scaling needed: bf16 has float32's exponent range), or nothing."""
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def to_input(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.ndim == 4 else x

    def describe(self) -> str:
        layout = ", channels-last" if self.channels_last else ""
        precision = "bfloat16 autocast" if self.bf16 else "float32"
        if self.fell_back:
            precision += f" (after {self.fell_back})"
        return f"{self.device.type}, {precision}{layout}, {self.threads} threads"


def cpu_supports_bf16() -> bool:
    """Native bfloat16 on this processor (AVX-512 BF16 or AMX): otherwise autocast is emulated and slower."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cuda_supports_bf16(device: torch.device) -> bool:
    """Native bfloat16 on this GPU: compute capability 8.0+ (Ampere on), or any ROCm GPU.

    Not torch.cuda.is_bf16_supported(): it also says yes on Volta and Turing (V100, T4), where bfloat16 is only
    emulated and slower than float32, and it asks about the current device rather than the one the run uses.
    """
    if torch.version.hip:
        return True
    return torch.cuda.get_device_capability(device)[0] >= 8


def training_device(name: str | None = None) -> torch.device:
    """The device a single-process run trains on for `--device name` (cuda when there is one, unless told)."""
    return resolve_device(name, World())


def resolve_device(name: str | None, world: World) -> torch.device:
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise GraftError(f"--device {name!r} is not a device (use cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise GraftError("--device cuda: no CUDA GPU is available to this process")
        if world.distributed and device.index is None:
            device = torch.device("cuda", world.local_rank)
    elif device.type != "cpu":
        raise GraftError(f"--device {name!r}: graft trains on cpu or cuda")
    return device


def resolve_runtime(config: TrainConfig, world: World) -> Runtime:
    device = resolve_device(config.device, world)
    supported = cuda_supports_bf16(device) if device.type == "cuda" else cpu_supports_bf16()
    if config.precision == "bf16" and not supported:
        raise GraftError(f"--precision bf16: this {device.type} has no native bfloat16; use fp32 or auto")
    bf16 = config.precision == "bf16" or (config.precision == "auto" and supported)
    channels_last = bool(config.channels_last)  # off unless asked: see the config field
    # Processes of one machine share its cores; oversubscribing them costs far more than it gains.
    threads = config.threads or max(1, available_cpus() // world.local_size)
    return Runtime(device, bf16, channels_last, threads)


def wrap_for_training(model: nn.Module, world: World, runtime: Runtime, config: TrainConfig) -> nn.Module:
    """What runs forward in training: the model, DDP around it across processes, compiled when asked.

    The parameters that DDP synchronises are those that train when it is built, so a phase change (unfreezing)
    needs a new wrapper. Checkpoints and the bundle always take the unwrapped model's weights.
    """
    wrapped: nn.Module = model
    if world.distributed:
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        wrapped = DistributedDataParallel(model, device_ids=device_ids)
    if config.compile:
        wrapped = torch.compile(wrapped)
    return wrapped
