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
        Path, typer.Argument(help="Bundle directory (or a rounds project: its promoted bundle); model.onnx goes in it.")
    ],
    format: Annotated[str, typer.Option("--format", "-f", metavar="<onnx>", help="Export format: onnx.")] = "onnx",
    opset: Annotated[int | None, typer.Option(min=7, help="ONNX opset. [default: the exporter's]")] = None,
    tolerance: Annotated[
        float, typer.Option(help="Largest |Δ logit| against PyTorch for the export to be used by graft serve.")
    ] = 1e-4,
    as_json: Annotated[bool, typer.Option("--json", help="Print the export record as JSON on stdout.")] = False,
) -> None:
    """Export the model to ONNX inside the bundle, checked against PyTorch; graft serve then uses ONNX Runtime.

    \b
    Examples:
      graft export runs/x/bundle --format onnx
    """
    from graft.bundle import load
    from graft.exports import export

    bundle = _bundle_dir(bundle)
    loaded = load(bundle)  # a damaged bundle is one line, before anything is announced
    console().print(f"exporting {bundle} to {format} and checking it against PyTorch…", markup=False)
    record = export(loaded, format, opset=opset, tolerance=tolerance)
    if as_json:
        print(json_text(record.to_dict()))
    verdict = "passed" if record.passed else "FAILED"
    print(
        f"wrote {bundle / record.file} (opset {record.opset}, onnxruntime {record.onnxruntime_version}): "
        f"max |Δ logit| vs PyTorch {record.max_abs_logit_delta:.2e}, parity {verdict} (≤ {record.tolerance:g})",
        file=sys.stderr if as_json else sys.stdout,
    )
    if not record.passed:
        raise GraftError(
            f"the ONNX export differs from PyTorch by {record.max_abs_logit_delta:.2e} > {record.tolerance:g}; "
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
            metavar="<auto|onnx|torch>",
            help="auto (ONNX Runtime when a checked export exists, else PyTorch), onnx or torch.",
        ),
    ] = "auto",
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
        int | None, typer.Option(help=f"Threads for the model. {_r('threads')} [default: all cores]")
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
    )
    serve(bundle, host=host, port=port, settings=settings, access_log=access_log)
