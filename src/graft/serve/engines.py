"""Engines: what turns a batch of model inputs into logits, PyTorch or ONNX Runtime.

An engine is a callable `(N, C, H, W) float32 tensor → (N, classes) logits`. Preprocessing before it and
ranking after it are the bundle's own (`Bundle.model_input`, `Bundle.rank`), so the engine is the only thing
that differs between them. ONNX Runtime is used by default when the bundle holds a checked, current export
(`graft.exports.onnx_export`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch

from graft.bundle import Bundle
from graft.errors import GraftError, first_line
from graft.exports import NO_EXPORT, onnx_export, onnx_runtime

log = logging.getLogger("graft.serve")

Engine = Callable[[torch.Tensor], torch.Tensor]


def torch_engine(bundle: Bundle) -> Engine:
    """The bundle's PyTorch model: exactly what `Bundle.predict` runs."""
    return bundle.logits


def onnx_engine(path: Path, threads: int | None = None) -> Engine:
    """An ONNX Runtime session on the CPU.

    Spinning is off: ONNX Runtime's threads otherwise busy-wait between runs and take the cores that decode
    uploads. Telemetry is off: ONNX Runtime may otherwise record events (paths, errors) for its vendor.
    """
    onnxruntime = onnx_runtime()
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or 0
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:
        raise GraftError(f"ONNX Runtime cannot load {path}: {first_line(error)}") from None
    input_name, output_name = session.get_inputs()[0].name, session.get_outputs()[0].name

    def run(batch: torch.Tensor) -> torch.Tensor:
        array = batch.detach().contiguous().numpy()
        return torch.from_numpy(session.run([output_name], {input_name: array})[0])

    return run


def open_engine(
    bundle: Bundle,
    choice: str = "auto",
    threads: int | None = None,
    export: tuple[Path | None, str] | None = None,
) -> tuple[Engine, str, str]:
    """(engine, its name, why it was chosen) for a loaded bundle.

    `auto` takes ONNX Runtime when the export is usable and PyTorch otherwise (a stale or failed export is
    logged); `onnx` insists and fails with the reason; `torch` never looks at the export. `export` is
    `onnx_export(bundle.path)` when the caller has it already.
    """
    if choice == "torch":
        return torch_engine(bundle), "torch", "PyTorch, as asked"
    if bundle.path is None:
        if choice == "onnx":
            raise GraftError("the ONNX engine needs a saved bundle with an export")
        return torch_engine(bundle), "torch", "PyTorch: the bundle is not saved, so it has no export"
    path, reason = export or onnx_export(bundle)
    if path is not None:
        return onnx_engine(path, threads), "onnx", reason
    if choice == "onnx":
        raise GraftError(f"--engine onnx: {reason}")
    if reason != NO_EXPORT:
        log.warning("not using the ONNX export: %s", reason)
    return torch_engine(bundle), "torch", f"PyTorch: {reason}"
