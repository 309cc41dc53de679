"""What `graft info` shows, from `graft.json` and the weights file's header alone: no torch, no model built.

`graft info` should answer at once (issue 16), and importing torch and timm to build a model only to count its
parameters takes seconds. The record holds the parameter count; it is believed only where the weights file's
header agrees (the same count of parameter tensors' elements). Anything else — no count recorded, a header that
is not plainly safetensors, another count — returns None, and the caller loads the bundle as before, which checks
every tensor and names what is wrong. So this path never reports a bundle differently from the full load; it only
skips the load where the answer is already known. An export's status needs only files' hashes (`export_status`,
which graft.exports and graft serve use too).
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

from graft.io import file_sha256
from graft.record import WEIGHTS_FILE, BundleRecord, ExportCertificate, ExportRecord, export_record

NO_EXPORT = "no ONNX export (graft export BUNDLE --format onnx)"
LABELS = {"onnx": "ONNX", "ort": "ORT", "onnx-int8": "int8 ONNX", "ort-int8": "int8 ORT"}
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
    add_export_statuses(meta, path, record.exports)
    return meta


def add_export_statuses(meta: dict, directory: Path, exports: dict) -> None:
    """`meta["export_statuses"]` (one line per recorded export) and `meta["export_status"]` (the float ONNX one,
    as graft serve sees it); `meta["exports"]` is dropped when there is none. Shared by both ways `info` answers."""
    if not meta.get("exports"):
        meta.pop("exports", None)
        return
    weights = file_sha256(directory / WEIGHTS_FILE)
    statuses = {}
    for name in meta["exports"]:
        path, reason, _ = export_status(directory, exports, name, weights_sha256=weights)
        serves = name in ("onnx", "onnx-int8")  # graft serve runs ONNX files; .ort files are for phones
        if path is None:
            statuses[name] = f"not usable: {reason}"
        elif name == "onnx-int8":
            statuses[name] = "used by graft serve --engine auto when within its --int8-* tolerance"
        else:
            statuses[name] = "used by graft serve" if serves else "checked and current"
    meta["export_statuses"] = statuses
    if "onnx" in statuses:
        meta["export_status"] = statuses["onnx"].replace("not usable:", "not used by graft serve:")


def export_status(
    directory: Path, exports: dict, name: str = "onnx", *, weights_sha256: str | None = None
) -> tuple[Path | None, str, ExportRecord | None]:
    """Export `name`'s file if it may be used, else None; a one-line reason either way; and its record when valid.

    Usable means: recorded, its checks passed, made from the current `model.safetensors`, file unchanged since.
    Whether an int8 export is *close enough* is the caller's policy, on `record.certificate` (graft serve's is
    in graft.serve.engines). Only files' hashes are read, so `graft info` answers without torch.
    `weights_sha256` is the weights file's hash when the caller has it already (it is the expensive part).
    """
    label = LABELS.get(name, name)
    missing = NO_EXPORT if name == "onnx" else f"no {label} export (graft export BUNDLE {_flags(name)})"
    if name not in exports:
        return None, missing, None
    record, problem = export_record(exports, name)
    if record is None:
        return None, f"{problem}; run graft export again", None
    if record.int8 != name.endswith("-int8") or record.format != name.removesuffix("-int8"):
        return None, f"the {label} export record describes another kind of export; run graft export again", None
    path = directory / record.file
    if not record.passed:
        if record.int8:
            return None, f"the {label} export gave non-finite logits on its parity probe", record
        return (
            None,
            (
                f"the {label} export failed its parity check (max |Δ logit| {record.max_abs_logit_delta} > "
                f"{record.tolerance})"
            ),
            record,
        )
    if not path.is_file():
        return None, f"the {label} export is recorded but {path.name} is missing", record
    if record.weights_sha256 != (weights_sha256 or file_sha256(directory / WEIGHTS_FILE)):
        return (
            None,
            f"the {label} export is stale: {WEIGHTS_FILE} changed since it was made; run graft export again",
            record,
        )
    if record.sha256 != file_sha256(path):
        return None, f"{path.name} does not match its export record; run graft export again", record
    if record.int8:
        return path, f"{label} export, certified: {_certified(record)}", record
    return (
        path,
        f"{label} export checked against PyTorch: max |Δ logit| {record.max_abs_logit_delta:.1e} ≤ "
        f"{record.tolerance:g}",
        record,
    )


def _flags(name: str) -> str:
    return f"--format {name.removesuffix('-int8')}" + (" --int8" if name.endswith("-int8") else "")


def _certified(record: ExportRecord) -> str:
    c = record.certificate
    if c is None:
        return "no certificate"
    return (
        f"top-1 agreement {c.top1_agreement:.2%} and accuracy drop {c.accuracy_drop * 100:.2f} pt on {c.images} "
        "test images"
    )


def certificate_summary(certificate: ExportCertificate) -> str:
    """An export certificate as one line, for the CLI and `graft info`."""
    c = certificate
    text = (
        f"on {c.images} {c.data} test images: top-1 agreement {c.top1_agreement:.2%} with the float model, "
        f"accuracy {c.accuracy:.2%} (float {c.float_accuracy:.2%}, drop {c.accuracy_drop * 100:+.2f} pt), "
        f"max |Δ logit| {c.max_abs_logit_delta:.2e}; {c.size_bytes / 1e6:.2f} MB, "
        f"{c.latency_ms:.2f} ms/image, {c.throughput_per_s:.0f} images/s at batch {c.batch_size} "
        f"({c.threads} threads)"
    )
    if c.float_size_bytes is not None and c.float_latency_ms is not None and c.float_throughput_per_s:
        text += (
            f"; float ONNX {c.float_size_bytes / 1e6:.2f} MB, {c.float_latency_ms:.2f} ms/image, "
            f"{c.float_throughput_per_s:.0f} images/s ({c.throughput_per_s / c.float_throughput_per_s:.2f}×)"
        )
    return text
