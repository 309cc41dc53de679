"""An export's certificate: how it compares with the float model on real test images, and what it costs to run.

Like surgery's certificates, every number is measured, never assumed: the export runs in ONNX Runtime on a seeded
sample of the bundle's test split beside the bundle's PyTorch model (the float model), and the certificate
records top-1 agreement, both accuracies, the largest |Δ logit| (compared in float64), the file's size, and its
median single-image latency and batched throughput in ONNX Runtime on this machine.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from graft.bundle_info import certificate_summary
from graft.cpus import available_cpus
from graft.errors import GraftError, first_line
from graft.exports.evidence import Sample
from graft.record import ExportCertificate
from graft.spec import InputSpec

DEFAULT_IMAGES = 1000  # test images a certificate measures (a seeded stratified sample when there are more)
DEFAULT_TIMING_RUNS = 20
DEFAULT_BATCH = 32  # images per run for the throughput figure
WARMUP_RUNS = 3


def onnx_runtime():
    """The onnxruntime module with its telemetry events turned off for this process: graft never lets it record
    paths or errors for its vendor (used by export checks and by graft serve)."""
    import onnxruntime

    disable = getattr(onnxruntime, "disable_telemetry_events", None)
    if disable is not None:
        disable()
    return onnxruntime


# ONNX Runtime's QDQ propagation moves an int8 model's quantise/dequantise pairs across a max-pool, which then runs
# on uint8 in NCHW: on the fold-32 ResNet-18 the stem's pool took 1.14 ms per batch of 32 against 0.18 in float, and
# without the pass the int8 model ran 1.41× the float one instead of 1.17× (batch 32, 2 threads, one run, quiet
# machine). Float models have no such pairs, so it changes nothing for them, and for int8 ones it changes no number:
# quantisation is monotonic, so max-pooling before or after it gives the same values (the bench's accuracies and
# agreements were identical with and without the pass). Certificates and `graft serve` open their sessions with the
# same list all the same, so what is certified is what is served.
DISABLED_OPTIMIZERS = ("QDQPropagationTransformer",)


def open_session(
    model: bytes | str,
    threads: int | None = None,
    *,
    refusal: str = "ONNX Runtime cannot run the exported model",
    profile_prefix: str | None = None,
):
    """A CPU InferenceSession of a serialised ONNX or ORT-format model (or a file path); spinning off, so that
    timings are of the work and serve's decoding threads keep their cores; `DISABLED_OPTIMIZERS` off. The one way
    graft opens a session (export checks, certificates and `graft serve`), so what is certified is what is served;
    a model ONNX Runtime refuses is a GraftError starting with `refusal`. With `profile_prefix`, ONNX Runtime's
    profiler records every run into a file starting with it (`session.end_profiling()` names the file)."""
    onnxruntime = onnx_runtime()
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or 0
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile_prefix is not None:
        options.enable_profiling, options.profile_file_prefix = True, profile_prefix
    try:
        return onnxruntime.InferenceSession(
            model, options, providers=["CPUExecutionProvider"], disabled_optimizers=list(DISABLED_OPTIMIZERS)
        )
    except Exception as error:
        raise GraftError(f"{refusal}: {first_line(error)}") from None


def runner(session) -> Callable[[np.ndarray], np.ndarray]:
    """float32 NCHW array → logits array, with the session's own input and output names."""
    input_name, output_name = session.get_inputs()[0].name, session.get_outputs()[0].name
    return lambda batch: session.run([output_name], {input_name: np.ascontiguousarray(batch, np.float32)})[0]


def compare(
    reference: Callable[[torch.Tensor], torch.Tensor],
    candidate: Callable[[np.ndarray], np.ndarray],
    sample: Sample,
    spec: InputSpec,
) -> dict:
    """Top-1 agreement, accuracies and max |Δ logit| of `candidate` against `reference` over `sample`."""
    agree = right = reference_right = 0
    delta = 0.0
    start = 0
    for batch in sample.inputs(spec):
        truth, start = sample.labels[start : start + len(batch)], start + len(batch)
        expected = reference(batch).double().numpy()
        got = np.asarray(candidate(batch.numpy()), dtype=np.float64)
        if got.shape != expected.shape:
            raise GraftError(f"the export gives logits of shape {got.shape} for {expected.shape}")
        difference = float(np.abs(got - expected).max())
        delta = max(delta, difference if math.isfinite(difference) else math.inf)
        ours, theirs = got.argmax(1), expected.argmax(1)
        agree += int((ours == theirs).sum())
        right += int((ours == truth).sum())
        reference_right += int((theirs == truth).sum())
    n = len(sample)
    return {
        "images": n,
        "top1_agreement": agree / n,
        "accuracy": right / n,
        "float_accuracy": reference_right / n,
        "accuracy_drop": (reference_right - right) / n,
        "max_abs_logit_delta": delta,
    }


def timings(run: Callable[[np.ndarray], np.ndarray], example: np.ndarray, runs: int, batch: int) -> tuple[float, float]:
    """(median single-image latency in ms, batched throughput in images/s, from the median batch time)."""
    single = example[:1]
    batched = np.concatenate([example] * math.ceil(batch / len(example)))[:batch]
    for _ in range(WARMUP_RUNS):
        run(single)
        run(batched)
    latency = statistics.median(_seconds(run, single) for _ in range(runs)) * 1000
    per_batch = statistics.median(_seconds(run, batched) for _ in range(runs))
    return latency, batch / per_batch


def _seconds(run: Callable[[np.ndarray], np.ndarray], batch: np.ndarray) -> float:
    started = time.perf_counter()
    run(batch)
    return time.perf_counter() - started


def certify(
    export: bytes,
    reference: Callable[[torch.Tensor], torch.Tensor],
    sample: Sample,
    spec: InputSpec,
    data: str,
    *,
    float_export: bytes | None = None,
    runs: int = DEFAULT_TIMING_RUNS,
    batch: int = DEFAULT_BATCH,
    threads: int | None = None,
) -> ExportCertificate:
    """The certificate of `export` (serialised ONNX or ORT); with `float_export`, the float model's ONNX file is
    timed alike for comparison (for int8 exports)."""
    threads = threads or available_cpus()
    run = runner(open_session(export, threads))
    measured = compare(reference, run, sample, spec)
    example = next(sample.inputs(spec, chunk=batch)).numpy()
    latency, throughput = timings(run, example, runs, batch)
    float_figures: dict = {}
    if float_export is not None:
        float_latency, float_throughput = timings(runner(open_session(float_export, threads)), example, runs, batch)
        float_figures = {
            "float_size_bytes": len(float_export),
            "float_latency_ms": float_latency,
            "float_throughput_per_s": float_throughput,
        }
    return ExportCertificate(
        data=data,
        sample=sample.description,
        size_bytes=len(export),
        latency_ms=latency,
        throughput_per_s=throughput,
        batch_size=batch,
        threads=threads,
        timing_runs=runs,
        **measured,
        **float_figures,
    )


summary = certificate_summary  # one line for the CLI and `graft info` (torch-free, in graft.bundle_info)
