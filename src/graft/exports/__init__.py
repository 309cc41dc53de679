"""`graft export`: a copy of a bundle's model for ONNX Runtime, checked and recorded in `graft.json`.

Four kinds, each its own file and record (`graft.json` → `exports.<name>`): `onnx` (model.onnx), `ort`
(model.ort, ONNX Runtime Mobile's format), and their int8 versions `onnx-int8` / `ort-int8` (model.int8.onnx,
model.int8.ort; static QDQ quantisation, graft.exports.quantise). A record says how far ONNX Runtime's logits are
from PyTorch's (parity on random probes), how the file compares with the float model on the bundle's test images
(its certificate: agreement, accuracy, size, latency, throughput; graft.exports.certificate), with which opset
and versions, and which weights it was made from (sha256 of `model.safetensors`). The server uses an export only
while its record says the checks passed and the weights are still the same, so a bundle retrained in place never
serves stale weights. Before anything is checked, convolution kernels are cut to the taps that see pixels
(graft.exports.crop: exact; it matters on small maps, e.g. ResNet-18 at 32 px). Both files are written atomically:
the export file first, then the record, which also holds the file's sha256, so an interruption between the two
leaves an export that is ignored, never one that is trusted wrongly.

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
from graft.bundle_info import LABELS, NO_EXPORT, export_status
from graft.data.preprocess import normalise
from graft.errors import GraftError, first_line
from graft.exports.certificate import (
    DEFAULT_IMAGES,
    DEFAULT_TIMING_RUNS,
    onnx_runtime,
    open_session,
    runner,
)
from graft.exports.certificate import certify as certify
from graft.exports.crop import crop_kernels
from graft.exports.evidence import Sample, bundle_splits, sample
from graft.exports.ort_format import ORT_STYLE
from graft.exports.quantise import CALIBRATION_METHOD, KEEP_FLOAT, PER_CHANNEL
from graft.io import atomic_write_bytes, file_sha256
from graft.record import ONNX_FILE, WEIGHTS_FILE, ExportRecord, QuantisationRecord

__all__ = ["EXPORT_FILES", "FORMATS", "LABELS", "NO_EXPORT", "export", "export_name", "onnx_export", "onnx_runtime",
           "read_exports", "usable_export"]  # fmt: skip

DEFAULT_TOLERANCE = 1e-4
DEFAULT_CALIBRATION_IMAGES = 256  # onnxruntime's advice is a few hundred representative inputs
FORMATS = ("onnx", "ort")
EXPORT_FILES = {"onnx": ONNX_FILE, "ort": "model.ort", "onnx-int8": "model.int8.onnx", "ort-int8": "model.int8.ort"}
_PROBE_BATCHES = (8, 1)  # two batch sizes: the exported batch dimension must really be dynamic
_INPUT, _OUTPUT = "input", "logits"


def export_name(format: str = "onnx", int8: bool = False) -> str:
    """The key of an export in `graft.json` → `exports`: onnx, ort, onnx-int8 or ort-int8."""
    return f"{format}-int8" if int8 else format


def export(
    bundle: Bundle | str | Path,
    format: str = "onnx",
    *,
    int8: bool = False,
    opset: int | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    seed: int = 0,
    data: str | None = None,
    data_root: str | None = None,
    certify_images: int = DEFAULT_IMAGES,
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
    per_channel: bool = PER_CHANNEL,
    calibration_method: str = CALIBRATION_METHOD,
    keep_float: str | tuple[str, ...] | list[str] = KEEP_FLOAT,
    timing_runs: int = DEFAULT_TIMING_RUNS,
    threads: int | None = None,
) -> ExportRecord:
    """Write the export file into the bundle directory and record its checks in `graft.json` → `exports`.

    `format` onnx writes `model.onnx`, ort writes `model.ort` (ONNX Runtime Mobile's format, by onnxruntime's
    converter); `int8` quantises first (static QDQ, calibrated on `calibration_images` training images with
    `calibration_method`, MinMax, Percentile or Entropy; the layers in `keep_float`, first-conv and/or last-linear,
    stay float) and writes `model.int8.onnx` / `model.int8.ort`.

    Every export is checked twice. The parity check runs seeded random images (pixels uniform in [0, 1],
    normalised by the bundle's spec) through PyTorch and ONNX Runtime at batch sizes 8 and 1 and records the
    largest |Δ logit|; a float export `passed` when it is ≤ `tolerance`. The certificate runs up to
    `certify_images` images of the bundle's test split (`data` overrides the recorded source) through both and
    records agreement, accuracies, size and timings (graft.exports.certificate). A float export of a bundle
    without test images has no certificate (the record says why); an int8 export is refused without one, because
    only the certificate can say whether it may be used. A failed check is still written and recorded (so
    `graft info` can say why the server does not use it); the CLI reports it as an error.
    """
    if format not in FORMATS:
        raise GraftError(f"unknown export format {format!r}; choose {', '.join(FORMATS)}")
    if not tolerance > 0:
        raise GraftError(f"--tolerance must be a positive number, got {tolerance}")
    if int8 and certify_images < 1:
        raise GraftError("an int8 export is used only on its certificate: --certify-images must be at least 1")
    if certify_images < 0 or calibration_images < 1 or timing_runs < 1:
        raise GraftError("--certify-images must be ≥ 0, --calibration-images and the timing runs ≥ 1")
    if int8:  # a wrong name is refused before the bundle is read
        from graft.exports.quantise import calibration_method as method_name
        from graft.exports.quantise import parse_keep_float

        calibration_method = method_name(calibration_method)
        keep_float = parse_keep_float(keep_float if isinstance(keep_float, str) else ",".join(keep_float) or "none")
    bundle = bundle if isinstance(bundle, Bundle) else load(bundle)
    if bundle.path is None or not (Path(bundle.path) / WEIGHTS_FILE).is_file():
        raise GraftError("only a saved bundle can be exported: save it first (Bundle.save)")
    directory = Path(bundle.path)
    weights_sha = file_sha256(directory / WEIGHTS_FILE)
    name = export_name(format, int8)
    # The images come first: a bundle that cannot be calibrated or certified is refused before the slow part.
    test, calibration, source, note = _evidence(bundle, int8, data, data_root, certify_images, calibration_images, seed)

    model = bundle.model.eval()
    float_onnx, exporter = _to_onnx(model, _probes(bundle, seed)[0], opset)
    float_onnx, cropped = crop_kernels(float_onnx)  # exact; the checks below measure the file as written
    payload, quantisation = float_onnx, None
    if int8:
        from graft.exports.quantise import ACTIVATIONS, WEIGHTS, quantise

        batches = (batch.numpy() for batch in calibration.inputs(bundle.spec, chunk=32))
        payload, kept = quantise(
            float_onnx, batches, _INPUT, per_channel=per_channel, method=calibration_method, keep_float=keep_float
        )
        quantisation = QuantisationRecord(
            activations=ACTIVATIONS,
            weights=WEIGHTS,
            per_channel=per_channel,
            calibration_method=calibration_method,
            keep_float=list(keep_float),
            float_nodes=kept,
            calibration_images=len(calibration),
            calibration_data=calibration.description,
            onnxruntime_version=onnx_runtime().__version__,
        )
    if format == "ort":
        from graft.exports.ort_format import onnx_to_ort

        payload = onnx_to_ort(payload)
    logit_delta, probability_delta = _parity(model, payload, _probes(bundle, seed))
    certificate = None
    if test is not None:
        certificate = certify(
            payload,
            bundle.logits,
            test,
            bundle.spec,
            source,
            float_export=float_onnx if int8 else None,
            runs=timing_runs,
            threads=threads,
        )
    record = ExportRecord(
        file=EXPORT_FILES[name],
        format=format,  # type: ignore[arg-type]
        int8=int8,
        sha256=_sha256_bytes(payload),
        weights_sha256=weights_sha,
        opset=_opset(float_onnx),
        exporter=exporter + (f" → onnxruntime ORT converter ({ORT_STYLE})" if format == "ort" else ""),
        torch_version=torch.__version__,
        onnxruntime_version=onnx_runtime().__version__,
        max_abs_logit_delta=logit_delta,
        max_abs_probability_delta=probability_delta,
        tolerance=None if int8 else tolerance,
        passed=math.isfinite(logit_delta) if int8 else logit_delta <= tolerance,
        probe=f"{sum(_PROBE_BATCHES)} seeded random images (seed {seed}), batch sizes {list(_PROBE_BATCHES)}",
        created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        quantisation=quantisation,
        certificate=certificate,
        certificate_note=note,
        cropped_convolutions=cropped,
    )
    atomic_write_bytes(directory / record.file, payload)
    updated = bundle_record.update(
        directory, lambda old: old.model_copy(update={"exports": {**old.exports, name: record.to_dict()}})
    )
    bundle.exports = dict(updated.exports)
    return record


def _evidence(
    bundle: Bundle,
    int8: bool,
    data: str | None,
    data_root: str | None,
    certify_images: int,
    calibration_images: int,
    seed: int,
) -> tuple[Sample | None, Sample | None, str, str | None]:
    """(test sample or None, calibration sample or None, the data's name, why there is no certificate or None).

    Without images a float export goes on uncertified; an int8 one is refused, in one line saying why.
    """
    if certify_images == 0:
        return None, None, "", "not measured: --certify-images 0"
    try:
        splits, source = bundle_splits(bundle, data, data_root)
        test = sample(splits.test, bundle.classes, certify_images, seed, "test")
        calibration = sample(splits.train, bundle.classes, calibration_images, seed, "training") if int8 else None
    except GraftError as error:
        if int8:
            raise GraftError(f"cannot quantise to int8 without the bundle's images: {error}") from None
        return None, None, "", f"not measured: {error}"
    return test, calibration, source, None


def _probes(bundle: Bundle, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [
        normalise(torch.rand(n, bundle.spec.channels, *bundle.spec.size, generator=generator), bundle.spec)
        for n in _PROBE_BATCHES
    ]


def _parity(model: torch.nn.Module, payload: bytes, probes: list[torch.Tensor]) -> tuple[float, float]:
    """Largest |Δ logit| and |Δ probability| of the exported file against PyTorch over the probes."""
    run = runner(open_session(payload))
    logit_delta = probability_delta = 0.0
    for batch in probes:
        with torch.no_grad():
            expected = model(batch)
        got = torch.from_numpy(run(batch.numpy()))
        if got.shape != expected.shape:
            raise GraftError(
                f"the exported model gives shape {tuple(got.shape)} for {tuple(expected.shape)}; not written"
            )
        logit_delta = max(logit_delta, _max_abs(got - expected))
        probability_delta = max(probability_delta, _max_abs(torch.softmax(got, 1) - torch.softmax(expected, 1)))
    return logit_delta, probability_delta


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
    """The bundle's float ONNX file if the server may use it, else None; and a one-line reason either way."""
    path, reason, _ = usable_export(source, "onnx", weights_sha256=weights_sha256)
    return path, reason


def usable_export(
    source: Bundle | str | Path, name: str = "onnx", *, weights_sha256: str | None = None
) -> tuple[Path | None, str, ExportRecord | None]:
    """Export `name`'s file if it may be used, else None; a one-line reason either way; and its record when valid.

    Usable means: recorded, its checks passed, made from the current `model.safetensors`, file unchanged since.
    Whether an int8 export is *close enough* is the caller's policy, on `record.certificate` (graft serve's is
    in graft.serve.engines). `source` is a loaded bundle (its export record as read, no second read of
    `graft.json`) or a directory; `weights_sha256` is the weights file's hash when the caller has it already.
    """
    if isinstance(source, Bundle):
        if source.path is None:
            return None, export_status(Path(), {}, name)[1], None
        directory, exports = Path(source.path), source.exports
    else:
        directory, exports = Path(source), read_exports(source)
    return export_status(directory, exports, name, weights_sha256=weights_sha256)
