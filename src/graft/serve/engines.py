"""Engines: what turns a batch of model inputs into logits, PyTorch or ONNX Runtime.

An engine is a callable `(N, C, H, W) float32 tensor → (N, classes) logits`. Preprocessing before it and
ranking after it are the bundle's own (`Bundle.model_input`, `Bundle.rank`), so the engine is the only thing
that differs between them. With `auto`, the bundle's int8 ONNX export is used when it is current and its
certificate is within the server's tolerance (`int8_verdict`), else its float ONNX export when checked and current
(`graft.exports.onnx_export`), else PyTorch; whatever is passed over is logged with the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch

from graft.bundle import Bundle
from graft.errors import GraftError
from graft.exports import NO_EXPORT, onnx_export, usable_export
from graft.exports.certificate import open_session, runner
from graft.record import ExportRecord
from graft.serve.settings import ServeSettings

log = logging.getLogger("graft.serve")

Engine = Callable[[torch.Tensor], torch.Tensor]


def torch_engine(bundle: Bundle) -> Engine:
    """The bundle's PyTorch model: exactly what `Bundle.predict` runs."""
    return bundle.logits


def onnx_engine(path: Path, threads: int | None = None) -> Engine:
    """An ONNX Runtime session on the CPU.

    Spinning is off: ONNX Runtime's threads otherwise busy-wait between runs and take the cores that decode
    uploads. Telemetry is off: ONNX Runtime may otherwise record events (paths, errors) for its vendor. Opened as
    the export certificates open theirs (`exports.certificate.open_session`), so what is certified is what is served.
    """
    run_arrays = runner(open_session(str(path), threads, refusal=f"ONNX Runtime cannot load {path}"))

    def run(batch: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(run_arrays(batch.detach().numpy()))

    return run


INT8 = "onnx-int8"


def int8_verdict(record: ExportRecord, settings: ServeSettings) -> str | None:
    """None when the int8 export's certificate is within the tolerance, else the first reason it is not."""
    c = record.certificate
    if c is None:
        return f"the int8 export has no certificate ({record.certificate_note or 'not measured'})"
    if c.images < settings.int8_min_images:
        return (
            f"its certificate measured {c.images} test images, fewer than --int8-min-images {settings.int8_min_images}"
        )
    if c.top1_agreement < settings.int8_min_agreement:
        return (
            f"its top-1 agreement with the float model, {c.top1_agreement:.2%} on {c.images} test images, is below "
            f"--int8-min-agreement {settings.int8_min_agreement:g}"
        )
    if c.accuracy_drop * 100 > settings.int8_max_accuracy_drop:
        return (
            f"its accuracy drop, {c.accuracy_drop * 100:.2f} points on {c.images} test images "
            f"({c.float_accuracy:.2%} → {c.accuracy:.2%}), is above --int8-max-accuracy-drop "
            f"{settings.int8_max_accuracy_drop:g}"
        )
    return None


def _int8(bundle: Bundle, settings: ServeSettings, weights_sha256: str | None) -> tuple[Path | None, str]:
    """The int8 export's file if this server may use it, and why (not) in one line."""
    path, reason, record = usable_export(bundle, INT8, weights_sha256=weights_sha256)
    if INT8 not in bundle.exports:
        return None, reason
    if path is None or record is None:
        return None, f"not using the int8 export: {reason}"
    refused = int8_verdict(record, settings)
    if refused is not None:
        return None, f"not using the int8 export: {refused}"
    c = record.certificate
    assert c is not None  # int8_verdict refuses an export without one
    return path, (
        f"int8 ONNX export within tolerance: top-1 agreement {c.top1_agreement:.2%} ≥ {settings.int8_min_agreement:g}, "
        f"accuracy drop {c.accuracy_drop * 100:.2f} ≤ {settings.int8_max_accuracy_drop:g} points on {c.images} test "
        f"images; {c.size_bytes / 1e6:.1f} MB"
    )


def open_engine(
    bundle: Bundle,
    choice: str = "auto",
    threads: int | None = None,
    export: tuple[Path | None, str] | None = None,
    settings: ServeSettings | None = None,
    weights_sha256: str | None = None,
) -> tuple[Engine, str, str]:
    """(engine, its name, why it was chosen) for a loaded bundle.

    `auto` takes the int8 export when it is usable and within `settings`' tolerance, else the float ONNX export
    when usable, else PyTorch (a refused int8, or a stale or failed export, is logged and named in the reason);
    `int8` and `onnx` insist and fail with the reason; `torch` never looks at the exports. `export` is
    `onnx_export(bundle.path)` when the caller has it already.
    """
    settings = settings or ServeSettings()
    if choice == "torch":
        return torch_engine(bundle), "torch", "PyTorch, as asked"
    if bundle.path is None:
        if choice in ("onnx", "int8"):
            raise GraftError(f"the {choice} engine needs a saved bundle with an export")
        return torch_engine(bundle), "torch", "PyTorch: the bundle is not saved, so it has no export"
    passed_over = ""
    if choice in ("auto", "int8"):
        path, reason = _int8(bundle, settings, weights_sha256)
        if path is not None:
            return onnx_engine(path, threads), INT8, reason
        if choice == "int8":
            raise GraftError(f"--engine int8: {reason}")
        if INT8 in bundle.exports:  # an int8 export exists but is refused: say why, wherever the engine is shown
            log.warning("%s", reason)
            passed_over = f"; {reason}"
    path, reason = export or onnx_export(bundle, weights_sha256=weights_sha256)
    if path is not None:
        return onnx_engine(path, threads), "onnx", reason + passed_over
    if choice == "onnx":
        raise GraftError(f"--engine onnx: {reason}")
    if reason != NO_EXPORT:
        log.warning("not using the ONNX export: %s", reason)
    return torch_engine(bundle), "torch", f"PyTorch: {reason}{passed_over}"
