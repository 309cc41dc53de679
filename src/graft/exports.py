"""`graft export`: an ONNX copy of a bundle's model, checked against PyTorch and recorded in `graft.json`.

The export lives inside the bundle (`model.onnx`) and its record (`graft.json` → `exports.onnx`) says how far
ONNX Runtime's logits are from PyTorch's, with which opset and versions, and which weights it was made from
(sha256 of `model.safetensors`). The server uses the export only while that record says the check passed and
the weights are still the same, so a bundle retrained in place never serves stale weights. Both files are
written atomically: `model.onnx` first, then the record, which also holds the sha256 of `model.onnx` itself,
so an interruption between the two leaves an export that is ignored, never one that is trusted wrongly.

No FastAPI here: exporting needs only torch, onnx and onnxruntime.
"""

from __future__ import annotations

import datetime as _dt
import math
import warnings
from pathlib import Path

import torch

from graft import record as bundle_record
from graft.bundle import Bundle, load
from graft.bundle_info import NO_EXPORT, onnx_status
from graft.data.preprocess import normalise
from graft.errors import GraftError, first_line
from graft.io import atomic_write_bytes, file_sha256
from graft.record import ONNX_FILE, WEIGHTS_FILE, ExportRecord

DEFAULT_TOLERANCE = 1e-4
FORMATS = ("onnx",)
_PROBE_BATCHES = (8, 1)  # two batch sizes: the exported batch dimension must really be dynamic
_INPUT, _OUTPUT = "input", "logits"


def export(
    bundle: Bundle | str | Path,
    format: str = "onnx",
    *,
    opset: int | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    seed: int = 0,
) -> ExportRecord:
    """Write `model.onnx` into the bundle directory and record the parity check in its `graft.json`.

    The check runs seeded random images (pixels uniform in [0, 1], normalised by the bundle's spec) through
    PyTorch and ONNX Runtime at batch sizes 8 and 1 and records the largest |Δ logit|; `passed` is whether it is
    ≤ `tolerance`. A failed check is still written and recorded (so `graft info` can say why the server keeps
    PyTorch); the CLI reports it as an error.
    """
    if format not in FORMATS:
        raise GraftError(f"unknown export format {format!r}; choose {', '.join(FORMATS)}")
    if not tolerance > 0:
        raise GraftError(f"--tolerance must be a positive number, got {tolerance}")
    bundle = bundle if isinstance(bundle, Bundle) else load(bundle)
    if bundle.path is None or not (Path(bundle.path) / WEIGHTS_FILE).is_file():
        raise GraftError("only a saved bundle can be exported: save it first (Bundle.save)")
    directory = Path(bundle.path)
    weights_sha = file_sha256(directory / WEIGHTS_FILE)

    model = bundle.model.eval()
    generator = torch.Generator().manual_seed(seed)
    probes = [
        normalise(torch.rand(n, bundle.spec.channels, *bundle.spec.size, generator=generator), bundle.spec)
        for n in _PROBE_BATCHES
    ]
    data, exporter = _to_onnx(model, probes[0], opset)
    session = _session(data)
    logit_delta = probability_delta = 0.0
    for batch in probes:
        with torch.no_grad():
            expected = model(batch)
        got = torch.from_numpy(session.run([_OUTPUT], {_INPUT: batch.numpy()})[0])
        if got.shape != expected.shape:
            raise GraftError(f"the ONNX model gives shape {tuple(got.shape)} for {tuple(expected.shape)}; not written")
        logit_delta = max(logit_delta, _max_abs(got - expected))
        probability_delta = max(probability_delta, _max_abs(torch.softmax(got, 1) - torch.softmax(expected, 1)))

    import onnxruntime

    record = ExportRecord(
        file=ONNX_FILE,
        sha256=_sha256_bytes(data),
        weights_sha256=weights_sha,
        opset=_opset(data),
        exporter=exporter,
        torch_version=torch.__version__,
        onnxruntime_version=onnxruntime.__version__,
        max_abs_logit_delta=logit_delta,
        max_abs_probability_delta=probability_delta,
        tolerance=tolerance,
        passed=logit_delta <= tolerance,
        probe=f"{sum(_PROBE_BATCHES)} seeded random images (seed {seed}), batch sizes {list(_PROBE_BATCHES)}",
        created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    )
    atomic_write_bytes(directory / ONNX_FILE, data)
    updated = bundle_record.update(
        directory, lambda old: old.model_copy(update={"exports": {**old.exports, "onnx": record.to_dict()}})
    )
    bundle.exports = dict(updated.exports)
    return record


def _to_onnx(model: torch.nn.Module, example: torch.Tensor, opset: int | None) -> tuple[bytes, str]:
    """Serialised ONNX with a dynamic batch dimension: torch's dynamo exporter, else its TorchScript one.

    The TorchScript exporter is deprecated, but still exports a few models torch.export cannot trace.
    """
    dynamo_error: Exception | None = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model,
                (example,),
                None,
                input_names=[_INPUT],
                output_names=[_OUTPUT],
                opset_version=opset,
                dynamo=True,
                external_data=False,
                verbose=False,
                dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=65536)},),
            )
        return program.model_proto.SerializeToString(), "torch.onnx dynamo"
    except Exception as error:  # any tracing failure: try the older exporter before giving up
        dynamo_error = error
    import io

    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (example,),
                buffer,
                input_names=[_INPUT],
                output_names=[_OUTPUT],
                opset_version=opset or 18,
                dynamo=False,
                dynamic_axes={_INPUT: {0: "batch"}, _OUTPUT: {0: "batch"}},
            )
    except Exception as error:
        raise GraftError(
            f"this model cannot be exported to ONNX: {first_line(dynamo_error)} (TorchScript exporter: "
            f"{first_line(error)})"
        ) from None
    return buffer.getvalue(), "torch.onnx torchscript"


def _max_abs(delta: torch.Tensor) -> float:
    """Largest |Δ|, with NaN counted as infinitely far (a NaN would otherwise pass every comparison)."""
    value = float(delta.abs().max())
    return value if math.isfinite(value) else math.inf


def onnx_runtime():
    """The onnxruntime module with its telemetry events turned off for this process: graft never lets it record
    paths or errors for its vendor (used by export checks and by graft serve)."""
    import onnxruntime

    disable = getattr(onnxruntime, "disable_telemetry_events", None)
    if disable is not None:
        disable()
    return onnxruntime


def _session(data: bytes):
    onnxruntime = onnx_runtime()
    try:
        return onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    except Exception as error:
        raise GraftError(f"ONNX Runtime cannot run the exported model: {first_line(error)}") from None


def _opset(data: bytes) -> int:
    import onnx

    proto = onnx.load_from_string(data)
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def _sha256_bytes(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def read_exports(directory: str | Path) -> dict:
    """`graft.json` → `exports` of a bundle directory ({} when there is none or the record cannot be read)."""
    try:
        return dict(bundle_record.read(directory).exports)
    except GraftError:
        return {}


def onnx_export(source: Bundle | str | Path, *, weights_sha256: str | None = None) -> tuple[Path | None, str]:
    """The bundle's ONNX file if the server may use it, else None; and a one-line reason either way.

    Usable means: recorded, parity passed, made from the current `model.safetensors`, file unchanged since
    (graft.bundle_info.onnx_status, which `graft info` uses without torch). `source` is a loaded bundle (its export
    record as read, no second read of `graft.json`) or a directory; `weights_sha256` is the weights file's hash when
    the caller has it already (it is the expensive part).
    """
    if isinstance(source, Bundle):
        if source.path is None:
            return None, NO_EXPORT
        directory, exports = Path(source.path), source.exports
    else:
        directory, exports = Path(source), read_exports(source)
    return onnx_status(directory, exports, weights_sha256=weights_sha256)
