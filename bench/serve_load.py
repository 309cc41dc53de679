"""Load test of `graft serve` on loopback: throughput and p50/p99 latency at concurrency 1, 8 and 32.

Configurations, each its own server process on 127.0.0.1 with the same model and threads:

- torch, batching off (`--engine torch --max-batch 1`) and on (`--max-batch 16 --max-delay-ms 5`);
- onnx, batching off and on (ONNX Runtime on the bundle's checked export);
- naive: a plain Flask app (bench/naive_flask.py), one synchronous `Bundle.predict` per request.

An async httpx client in this process keeps `concurrency` requests in flight, each a PNG digit as the raw body,
up to `--requests` per cell and never longer than `--seconds` (then it stops sending and waits for what is in
flight); its connections are opened before the clock starts. A request that gets no answer is "lost". Without
`--bundle` it trains a ResNet-18 (fold, 32 px) on scikit-learn's digits for three epochs first; a given bundle is
copied, never changed. Client and servers share the machine's cores: absolute numbers are this machine's,
comparisons between rows are the point.

    uv run python bench/serve_load.py --json bench/results/serve_load.json
    uv run python bench/serve_load.py --bundle runs/x/bundle --configs onnx-batch --concurrency 8 --requests 200
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import io
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
CONFIGS: dict[str, list[str]] = {
    "torch-nobatch": ["--engine", "torch", "--max-batch", "1"],
    "torch-batch": ["--engine", "torch", "--max-batch", "16", "--max-delay-ms", "5"],
    "onnx-nobatch": ["--engine", "onnx", "--max-batch", "1"],
    "onnx-batch": ["--engine", "onnx", "--max-batch", "16", "--max-delay-ms", "5"],
    "naive-flask": [],
}


def make_bundle(args: argparse.Namespace, workdir: Path) -> Path:
    """The bundle under test, in `workdir`, with a checked ONNX export."""
    import graft

    target = workdir / "bundle"
    if args.bundle:
        shutil.copytree(args.bundle, target)
    else:
        print("training a ResNet-18 (fold, 32 px) on scikit-learn digits for 3 epochs…", file=sys.stderr, flush=True)
        graft.train(
            data="digits",
            model="resnet18",
            input_mode="fold",
            size=32,
            epochs=3,
            run_dir=str(workdir / "run"),
            output=str(target),
            workers=0,
        )
    record = graft.export(target, format="onnx")
    print(f"ONNX export: max |Δ logit| {record.max_abs_logit_delta:.2e}, passed {record.passed}", file=sys.stderr)
    return target


def digit_images(count: int) -> list[tuple[bytes, str]]:
    """Distinct test digits as PNG files at their native 8×8 (the server resizes them as in training), with labels."""
    from PIL import Image

    from graft.data import load_splits

    test = load_splits("digits").test
    images = []
    for index in range(min(count, len(test.labels))):
        pixels = test.image(index)[:, :, 0]
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "PNG")
        images.append((buffer.getvalue(), test.classes[test.labels[index]]))
    return images


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def server(config: str, bundle: Path, threads: int, log: Path):
    """Start one configuration's server on a free loopback port; yield its URL; stop it."""
    port = free_port()
    if config == "naive-flask":
        command = [sys.executable, str(REPO / "bench" / "naive_flask.py"), str(bundle), "--port", str(port)]
    else:
        command = [sys.executable, "-m", "graft", "serve", str(bundle), "--port", str(port), *CONFIGS[config]]
    command += ["--threads", str(threads)]
    with log.open("w") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 180
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"{config} server exited; see {log}")
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{config} server did not start; see {log}")
                time.sleep(0.2)
            yield url
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def load(url: str, images: list[tuple[bytes, str]], concurrency: int, total: int, seconds: float) -> dict:
    """Keep `concurrency` requests in flight until `total` were sent or `seconds` passed; measure each."""
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    batch_sizes: list[int] = []
    server_ms: list[float] = []
    correct = lost = sent = 0
    deadline = time.monotonic() + seconds
    # One client with one kept-alive connection per worker: a shared pool of many connections costs the client
    # more CPU than the server spends on a request, and client and server share this machine's cores.
    clients = [
        httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=1)) for _ in range(concurrency)
    ]

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal correct, lost, sent
        while sent < total and time.monotonic() < deadline:
            data, label = images[sent % len(images)]
            sent += 1
            started = time.perf_counter()
            try:
                response = await client.post("/v1/predict", content=data, headers={"content-type": "image/png"})
            except httpx.HTTPError:
                lost += 1
                continue
            latencies.append(time.perf_counter() - started)
            statuses[response.status_code] += 1
            if response.status_code == 200:
                body = response.json()
                correct += body["top"][0]["class"] == label
                if "latency_ms" in body:
                    batch_sizes.append(body["latency_ms"]["batch_size"])
                    server_ms.append(body["latency_ms"]["total"])

    try:
        # Open every connection first (not measured): the cell measures serving, not TCP set-up.
        await asyncio.gather(*(c.post("/v1/predict", content=images[i][0]) for i, c in enumerate(clients)))
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for client in clients))
        elapsed = time.perf_counter() - started
    finally:
        for client in clients:
            await client.aclose()

    ok = statuses.get(200, 0)
    ordered = sorted(latencies)
    return {
        "concurrency": concurrency,
        "sent": sent,
        "ok": ok,
        "lost": lost,
        "status_5xx": sum(n for status, n in statuses.items() if status >= 500),
        "status_4xx": sum(n for status, n in statuses.items() if 400 <= status < 500),
        "seconds": round(elapsed, 3),
        "throughput_rps": round(ok / elapsed, 2) if elapsed else 0.0,
        "p50_ms": round(_quantile(ordered, 0.50) * 1000, 2) if ordered else None,
        "p99_ms": round(_quantile(ordered, 0.99) * 1000, 2) if ordered else None,
        "mean_batch": round(statistics.fmean(batch_sizes), 2) if batch_sizes else None,
        "server_p50_ms": round(statistics.median(server_ms), 2) if server_ms else None,
        "top1_accuracy": round(correct / ok, 4) if ok else None,
    }


def _quantile(ordered: list[float], q: float) -> float:
    """The q-quantile of sorted values, by linear interpolation (numpy's default)."""
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def table(rows: list[dict]) -> str:
    head = "| config | concurrency | requests | req/s | p50 ms | p99 ms | server p50 | batch | lost | 5xx | top-1 |"
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in rows:
        batch = "—" if r["mean_batch"] is None else f"{r['mean_batch']:.1f}"
        inside = "—" if r["server_p50_ms"] is None else f"{r['server_p50_ms']:.1f}"
        top1 = "—" if r["top1_accuracy"] is None else f"{r['top1_accuracy']:.1%}"
        lines.append(
            f"| {r['config']} | {r['concurrency']} | {r['ok']}/{r['sent']} | {r['throughput_rps']:.1f} | "
            f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {inside} | {batch} | {r['lost']} | {r['status_5xx']} | {top1} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", help="bundle to serve (copied); default: train a ResNet-18 on digits")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=400, help="most requests per cell")
    parser.add_argument("--seconds", type=float, default=12.0, help="longest a cell keeps sending")
    parser.add_argument("--warmup", type=int, default=16, help="requests before each server is measured")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="model threads of each server")
    parser.add_argument("--json", type=Path, help="write the rows and the set-up here")
    args = parser.parse_args()

    started = time.monotonic()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="graft-serve-load-") as tmp:
        workdir = Path(tmp)
        bundle = make_bundle(args, workdir)
        images = digit_images(64)
        for config in args.configs:
            with server(config, bundle, args.threads, workdir / f"{config}.log") as url:
                asyncio.run(load(url, images, 4, args.warmup, 60))
                for concurrency in args.concurrency:
                    row = {"config": config, **asyncio.run(load(url, images, concurrency, args.requests, args.seconds))}
                    rows.append(row)
                    print(
                        f"{config:>14} c={concurrency:<3} {row['throughput_rps']:7.1f} req/s  p50 {row['p50_ms']} ms  "
                        f"p99 {row['p99_ms']} ms  lost {row['lost']}  5xx {row['status_5xx']}",
                        file=sys.stderr,
                        flush=True,
                    )
        import graft

        model = graft.info(bundle)
    print(table(rows))
    if args.json:
        import onnxruntime
        import torch

        setup = {
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "command": " ".join(["python", "bench/serve_load.py", *sys.argv[1:]]),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
            "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
            "model": {
                "timm_name": model["architecture"]["timm_name"],
                "input": model["input"]["size"],
                "parameters": model["parameters"],
                "onnx_max_abs_logit_delta": model["exports"]["onnx"]["max_abs_logit_delta"],
            },
            "configs": {name: CONFIGS[name] for name in args.configs},
            "requests_per_cell": args.requests,
            "seconds_per_cell": args.seconds,
            "threads": args.threads,
            "wall_seconds": round(time.monotonic() - started, 1),
        }
        from graft.io import atomic_write_json

        atomic_write_json(args.json, {"setup": setup, "rows": rows})
        print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
