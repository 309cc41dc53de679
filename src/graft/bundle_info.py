"""What `graft info` shows, from `graft.json` and the weights file's header alone: no torch, no model built.

`graft info` should answer at once (issue 16), and importing torch and timm to build a model only to count its
parameters takes seconds. The record holds the parameter count; it is believed only where the weights file's
header agrees (the same count of parameter tensors' elements). Anything else — no count recorded, a header that
is not plainly safetensors, another count — returns None, and the caller loads the bundle as before, which checks
every tensor and names what is wrong. So this path never reports a bundle differently from the full load; it only
skips the load where the answer is already known. The ONNX export status needs only files' hashes.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

from graft.io import file_sha256
from graft.record import WEIGHTS_FILE, BundleRecord, export_record

NO_EXPORT = "no ONNX export (graft export BUNDLE --format onnx)"
# BatchNorm's running statistics are buffers, not parameters: the header lists them beside the weights.
_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")
_MAX_HEADER_BYTES = 100 * 2**20  # safetensors' own limit


def header_parameters(weights: Path) -> int | None:
    """The number of parameter elements the safetensors file at `weights` holds (BatchNorm buffers excluded), read
    from its JSON header only; None where the file is not plainly a safetensors file."""
    try:
        with weights.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) != 8:
                return None
            (length,) = struct.unpack("<Q", prefix)
            if length > min(_MAX_HEADER_BYTES, weights.stat().st_size - 8):
                return None
            header = json.loads(handle.read(length))
    except (OSError, ValueError):
        return None
    if not isinstance(header, dict):
        return None
    total = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape):
            return None
        if not name.endswith(_BUFFER_SUFFIXES):
            total += math.prod(shape)
    return total


def record_info(path: Path, record: BundleRecord) -> dict | None:
    """`graft.api.info`'s answer for the bundle at `path` from its record, or None where the record alone cannot be
    trusted for it (see the module's docstring): then load the bundle."""
    if record.parameters is None or header_parameters(path / WEIGHTS_FILE) != record.parameters:
        return None
    meta = record.to_json()
    meta["path"] = str(path)
    if not meta["exports"]:
        del meta["exports"]
    else:
        usable, reason = onnx_status(path, record.exports)
        meta["export_status"] = "used by graft serve" if usable else f"not used by graft serve: {reason}"
    return meta


def onnx_status(directory: Path, exports: dict, *, weights_sha256: str | None = None) -> tuple[Path | None, str]:
    """The bundle's ONNX file if the server may use it, else None; and a one-line reason either way.

    Usable means: recorded, parity passed, made from the current `model.safetensors`, file unchanged since.
    `weights_sha256` is the weights file's hash when the caller has it already (it is the expensive part).
    """
    if "onnx" not in exports:
        return None, NO_EXPORT
    record, problem = export_record(exports, "onnx")
    if record is None:
        return None, f"{problem}; run graft export again"
    path = directory / record.file
    if not record.passed:
        return None, (
            f"the ONNX export failed its parity check (max |Δ logit| {record.max_abs_logit_delta} > {record.tolerance})"
        )
    if not path.is_file():
        return None, f"the ONNX export is recorded but {path.name} is missing"
    if record.weights_sha256 != (weights_sha256 or file_sha256(directory / WEIGHTS_FILE)):
        return None, f"the ONNX export is stale: {WEIGHTS_FILE} changed since it was made; run graft export again"
    if record.sha256 != file_sha256(path):
        return None, f"{path.name} does not match its export record; run graft export again"
    return path, (
        f"ONNX export checked against PyTorch: max |Δ logit| {record.max_abs_logit_delta:.1e} ≤ {record.tolerance:g}"
    )
