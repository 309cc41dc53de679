"""`graft export` and `graft serve`: a bundle to ONNX (checked against PyTorch), and a bundle over HTTP."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from graft.cli.common import _bundle_dir
from graft.errors import GraftError
from graft.io import json_text
from graft.progress import console
from graft.serve.settings import RANGES, ServeSettings


def export_command(
    bundle: Annotated[
        Path,
        typer.Argument(help="Bundle directory (or a rounds project: its promoted bundle); the export file goes in it."),
    ],
    format: Annotated[
        str,
        typer.Option(
            "--format",
            "-f",
            metavar="<onnx|ort>",
            help="onnx (model.onnx) or ort (model.ort: ONNX Runtime Mobile's format, by onnxruntime's converter).",
        ),
    ] = "onnx",
    int8: Annotated[
        bool,
        typer.Option(
            "--int8",
            help="Quantise to int8 (static, QDQ, per-channel weights), calibrated on the bundle's training images: "
            "model.int8.onnx / model.int8.ort. graft serve --engine auto uses it only within its tolerance.",
        ),
    ] = False,
    opset: Annotated[int | None, typer.Option(min=7, help="ONNX opset. [default: the exporter's]")] = None,
    tolerance: Annotated[
        float,
        typer.Option(help="Largest |Δ logit| against PyTorch for a float export to be used by graft serve."),
    ] = 1e-4,
    data: Annotated[
        str | None,
        typer.Option(
            "--data", "-d", help="Data for calibration and the certificate. [default: the bundle's own, as trained]"
        ),
    ] = None,
    data_root: Annotated[str | None, typer.Option(help="Where data sets are looked for.")] = None,
    certify_images: Annotated[
        int,
        typer.Option(
            min=0,
            help="Test images the certificate compares with the float model (a seeded stratified sample); "
            "0: no certificate (float exports only).",
        ),
    ] = 1000,
    calibration_images: Annotated[
        int, typer.Option(min=1, help="Training images int8 calibration sees (a seeded stratified sample).")
    ] = 256,
    per_channel: Annotated[
        bool, typer.Option(help="int8: one scale per output channel of each weight (else one per tensor).")
    ] = True,
    calibration_method: Annotated[
        str,
        typer.Option(
            metavar="<minmax|percentile|entropy>",
            help="int8: how activation ranges are set from the calibration images (onnxruntime's calibrators): "
            "minmax (the full observed range), percentile (clips the outer 0.001%) or entropy (the range that "
            "keeps the histogram's information).",
        ),
    ] = "minmax",
    keep_float: Annotated[
        str,
        typer.Option(
            metavar="<first-conv,last-linear|none>",
            help="int8: layers left in float, comma-separated. first-conv: the first convolution and the "
            "bias/offset/BatchNorm right after it (little work, but rounding there reaches every later layer); "
            "last-linear: the classifier; none: quantise everything.",
        ),
    ] = "first-conv",
    as_json: Annotated[bool, typer.Option("--json", help="Print the export record as JSON on stdout.")] = False,
) -> None:
    """Export the model for ONNX Runtime inside the bundle, checked against PyTorch and certified on test images.

    The certificate runs the export beside the float model on the bundle's test split: top-1 agreement,
    accuracy, max |Δ logit|, file size, single-image latency and batched throughput in ONNX Runtime.

    \b
    Examples:
      graft export runs/x/bundle                        # model.onnx; graft serve then uses ONNX Runtime
      graft export runs/x/bundle --format ort           # model.ort for ONNX Runtime Mobile
      graft export runs/x/bundle --int8                 # model.int8.onnx; graft serve --engine auto may use it
      graft export runs/x/bundle --format ort --int8    # model.int8.ort for a phone app
    """
    from graft.bundle import load
    from graft.exports import LABELS, export, export_name
    from graft.exports.certificate import summary

    bundle = _bundle_dir(bundle)
    loaded = load(bundle)  # a damaged bundle is one line, before anything is announced
    what = LABELS.get(export_name(format, int8), format)
    console().print(f"exporting {bundle} as {what} and checking it against PyTorch…", markup=False)
    record = export(
        loaded,
        format,
        int8=int8,
        opset=opset,
        tolerance=tolerance,
        data=data,
        data_root=data_root,
        certify_images=certify_images,
        calibration_images=calibration_images,
        per_channel=per_channel,
        calibration_method=calibration_method,
        keep_float=keep_float,
    )
    if as_json:
        print(json_text(record.to_dict()))
    out = sys.stderr if as_json else sys.stdout
    if record.int8:
        q = record.quantisation
        assert q is not None
        parity = "finite" if record.passed else "NOT finite"
        kept = ", ".join(q.keep_float) or "none"
        print(
            f"wrote {bundle / record.file} (opset {record.opset}, onnxruntime {record.onnxruntime_version}; int8 "
            f"{q.format}, {'per-channel' if q.per_channel else 'per-tensor'} weights, {q.calibration_method} "
            f"calibration on {q.calibration_images} training images, kept float: {kept}): max |Δ logit| vs PyTorch on "
            f"random probes {record.max_abs_logit_delta:.2e} ({parity})",
            file=out,
        )
    else:
        verdict = "passed" if record.passed else "FAILED"
        print(
            f"wrote {bundle / record.file} (opset {record.opset}, onnxruntime {record.onnxruntime_version}): "
            f"max |Δ logit| vs PyTorch {record.max_abs_logit_delta:.2e}, parity {verdict} (≤ {record.tolerance:g})",
            file=out,
        )
    if record.cropped_convolutions:
        count = len(record.cropped_convolutions)
        cut = f"{count} convolution{'s' * (count != 1)}"
        print(f"{cut} cut to the kernel taps that see pixels (exact in float)", file=out)
    if record.certificate is not None:
        print(f"certificate {summary(record.certificate)}", file=out)
    else:
        print(f"certificate {record.certificate_note}", file=out)
    if not record.passed:
        if record.int8:
            raise GraftError("the int8 export gives non-finite logits; graft serve will not use it")
        raise GraftError(
            f"the {what} export differs from PyTorch by {record.max_abs_logit_delta:.2e} > {record.tolerance:g}; "
            "graft serve will keep using PyTorch for this bundle"
        )


def _r(name: str) -> str:
    """A flag's accepted range for its help, from the settings that check it."""
    return f"[{RANGES[name].text()}]"


def serve_command(
    bundle: Annotated[
        Path, typer.Argument(help="Bundle directory to serve, or a rounds project (its promoted bundle, followed).")
    ],
    host: Annotated[
        str, typer.Option(help="Address to listen on; 0.0.0.0 exposes it to your network (then use --token).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port.")] = 8000,
    engine: Annotated[
        str,
        typer.Option(
            metavar="<auto|int8|onnx|torch>",
            help="auto (the int8 export when its certificate is within the --int8-* tolerance, else the float ONNX "
            "export when checked, else PyTorch), int8, onnx or torch.",
        ),
    ] = "auto",
    int8_min_agreement: Annotated[
        float,
        typer.Option(
            help=f"int8: least top-1 agreement with the float model on its test images. {_r('int8_min_agreement')}"
        ),
    ] = 0.99,
    int8_max_accuracy_drop: Annotated[
        float,
        typer.Option(help=f"int8: largest test accuracy drop from the float model. {_r('int8_max_accuracy_drop')}"),
    ] = 0.5,
    int8_min_images: Annotated[
        int,
        typer.Option(help=f"int8: fewest test images its certificate must have measured. {_r('int8_min_images')}"),
    ] = 200,
    max_batch: Annotated[
        int, typer.Option(help=f"Images per forward pass; 1 turns batching off. {_r('max_batch')}")
    ] = 16,
    max_delay_ms: Annotated[
        float, typer.Option(help=f"How long the first request of a batch waits for others. {_r('max_delay_ms')}")
    ] = 5.0,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="GRAFT_TOKEN", help="Require 'Authorization: Bearer TOKEN' for predict, model, reload, samples."
        ),
    ] = None,
    max_upload_mb: Annotated[
        float, typer.Option(help=f"Largest upload accepted (413 above). {_r('max_upload_mb')}")
    ] = 20.0,
    max_pixels: Annotated[
        int, typer.Option(help=f"Largest image in pixels, checked before decoding (413 above). {_r('max_pixels')}")
    ] = 50_000_000,
    max_side: Annotated[
        int, typer.Option(help=f"Longest image side in pixels, checked before decoding (413 above). {_r('max_side')}")
    ] = 16_384,
    max_queue: Annotated[
        int, typer.Option(help=f"Predict requests held at once; more get 503 with Retry-After. {_r('max_queue')}")
    ] = 64,
    timeout: Annotated[
        float, typer.Option(help=f"Seconds a predict request may take (504 after). {_r('timeout_s')}")
    ] = 30.0,
    threads: Annotated[
        int | None,
        typer.Option(help=f"Threads for the model. {_r('threads')} [default: all cores, or $OMP_NUM_THREADS]"),
    ] = None,
    decode_threads: Annotated[int, typer.Option(help=f"Threads decoding uploads. {_r('decode_threads')}")] = 2,
    header_timeout: Annotated[
        float,
        typer.Option(
            help=f"Seconds a connection has to send a request's headers; then it is closed. {_r('header_timeout_s')}"
        ),
    ] = 10.0,
    max_connections: Annotated[
        int, typer.Option(help=f"Open connections at most; more get 503 and are closed. {_r('max_connections')}")
    ] = 256,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            help="A Host name to answer besides IP addresses, localhost and this computer's name (repeatable; "
            "'*': any). Other names get 421: a DNS rebinding guard."
        ),
    ] = None,
    reload_root: Annotated[
        Path | None,
        typer.Option(
            help='POST /v1/reload {"bundle": PATH} loads only bundles under this directory. '
            "[default: the rounds project, or the directory of the served run: runs/ for runs/x/bundle]"
        ),
    ] = None,
    docs: Annotated[
        bool,
        typer.Option("--docs", help="Serve interactive API docs at /docs and /redoc (they load scripts from a CDN)."),
    ] = False,
    access_log: Annotated[
        bool, typer.Option("--access-log", help="Log every request (tokens in URLs redacted).")
    ] = False,
    watch: Annotated[
        float,
        typer.Option(help=f"For a rounds project: seconds between checks for a newly promoted round. {_r('watch_s')}"),
    ] = 2.0,
    samples_max_files: Annotated[
        int, typer.Option(help=f"Photos one POST /v1/samples may carry (413 above). {_r('samples_max_files')}")
    ] = 32,
    inbox_max_per_class: Annotated[
        int,
        typer.Option(help=f"For a rounds project: inbox photos per class (409 above). {_r('inbox_max_per_class')}"),
    ] = 2000,
    inbox_max_total: Annotated[
        int, typer.Option(help=f"For a rounds project: inbox photos in all (409 above). {_r('inbox_max_total')}")
    ] = 20_000,
    inbox_max_mb: Annotated[
        float, typer.Option(help=f"For a rounds project: inbox size in MB (409 above). {_r('inbox_max_mb')}")
    ] = 4096.0,
) -> None:
    """Serve a bundle over HTTP: a phone page at /, the API at /v1/predict (schema at /openapi.json).

    \b
    Examples:
      graft serve runs/x/bundle
      graft serve runs/x/bundle --host 0.0.0.0 --token SECRET   # reachable from a phone on your Wi-Fi
      graft serve proj          # a rounds project: serves its current round, switches when a new one is promoted
    \b
    POST /v1/reload or SIGHUP loads the bundle again (e.g. after a new round) without dropping requests.
    Serving a rounds project, POST /v1/samples stores labelled photos from the phone in its inbox
    (then: graft rounds add PROJECT NAME --inbox), POST /v1/samples/video a short clip's frames, and
    POST /v1/rounds trains the next round from the inbox in a background process (progress: GET /v1/training;
    a round stopped with the server resumes at the next start). See docs/phone.md.
    """
    from graft.serve.run import serve

    settings = ServeSettings(
        engine=engine,  # type: ignore[arg-type]
        max_batch=max_batch,
        max_delay_ms=max_delay_ms,
        max_queue=max_queue,
        max_upload_mb=max_upload_mb,
        max_pixels=max_pixels,
        max_side=max_side,
        timeout_s=timeout,
        token=token,
        threads=threads,
        decode_threads=decode_threads,
        watch_s=watch,
        header_timeout_s=header_timeout,
        max_connections=max_connections,
        samples_max_files=samples_max_files,
        inbox_max_per_class=inbox_max_per_class,
        inbox_max_total=inbox_max_total,
        inbox_max_mb=inbox_max_mb,
        allowed_hosts=tuple(allowed_host or ()),
        reload_root=reload_root,
        docs=docs,
        int8_min_agreement=int8_min_agreement,
        int8_max_accuracy_drop=int8_max_accuracy_drop,
        int8_min_images=int8_min_images,
    )
    serve(bundle, host=host, port=port, settings=settings, access_log=access_log)
