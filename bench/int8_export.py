"""int8 vs float in ONNX Runtime for the ResNet-18 fold recipe on MNIST: size, latency, throughput, accuracy.

Takes a trained bundle of recipes/mnist-fold-32.toml (--bundle; without it, trains the recipe first, 1 epoch),
exports it with `graft export` as float ONNX and as int8 ONNX in several variants (static QDQ, U8S8, per-channel
weights; which layers stay float and which calibration method, see --variants), and reports what each int8
certificate measured on the MNIST test split (all 10 000 images by default) plus size, single-image latency and
batched throughput, timed in alternating rounds so that a loaded machine slows all alike (with them the float model
as torch.onnx writes it, before graft cuts kernels to the taps that see pixels). It also records whether
the CPU has VNNI (the int8 dot-product instructions ONNX Runtime's u8×s8 kernels use) and an ONNX Runtime
profile (milliseconds per op type at the batch size) of the float and the default int8 model, to say where the
time goes. Targets (issue 17): ≥ 2× batched throughput, ≤ 0.1 point accuracy loss.

    uv run python bench/int8_export.py --bundle /work/notes/fold32-bundle    # the figures in docs/benchmarks.md
    uv run python bench/int8_export.py                                       # trains the recipe first
    uv run python bench/int8_export.py --bundle B --variants default,none --per-tensor

Needs MNIST under $GRAFT_DATA/mnist (or ../shared/datasets/mnist beside the repository).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "mnist-fold-32.toml"
UNCUT = "float, kernels not cut"


def train(out: Path, args: argparse.Namespace) -> Path:
    command = [sys.executable, "-m", "graft", "train", str(RECIPE), "--offline", "--run-dir", str(out / "run"),
               "--output", str(out / "bundle")]  # fmt: skip
    if args.epochs:
        command += ["--epochs", str(args.epochs)]
    if args.max_train:
        command += ["--max-train", str(args.max_train)]
    subprocess.run(command, check=True)
    return out / "bundle"


# int8 variants: name → graft.export options. "default" is what `graft export --int8` does with no options.
VARIANTS = {
    "default": {},
    "none": {"keep_float": ["none"]},
    "first-conv+last-linear": {"keep_float": ["first-conv", "last-linear"]},
    "percentile": {"calibration_method": "Percentile"},
    "entropy": {"calibration_method": "Entropy"},
}


def alternating(models: dict[str, bytes], example, rounds: int, runs: int, batch: int, threads: int) -> dict:
    """Median latency (batch 1) and throughput (batch `batch`) per model over `rounds` rounds that time every model
    in turn, and per round the ratio to the float model's, so a slow spell shows up in the spread, not the ratio."""
    from graft.exports.certificate import open_session, runner, timings

    runs_of = {name: runner(open_session(data, threads)) for name, data in models.items()}
    figures: dict[str, list[tuple[float, float]]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, run in runs_of.items():
            figures[name].append(timings(run, example, runs, batch))
    base = figures["float"]
    return {
        name: {
            "latency_ms": statistics.median(f[0] for f in values),
            "throughput_per_s": statistics.median(f[1] for f in values),
            "latency_speedup_per_round": [b[0] / f[0] for b, f in zip(base, values, strict=True)],
            "throughput_speedup_per_round": [f[1] / b[1] for b, f in zip(base, values, strict=True)],
        }
        for name, values in figures.items()
    }


def profile(model: bytes, example, batch: int, threads: int, runs: int) -> dict[str, float]:
    """Milliseconds per run by ONNX Runtime op type (its own profiler), at `batch` images per run."""
    import collections

    import numpy as np

    from graft.exports.certificate import open_session

    with tempfile.TemporaryDirectory(prefix="graft-int8-profile-") as tmp:
        session = open_session(model, threads, profile_prefix=str(Path(tmp) / "profile"))  # as graft opens it
        name = session.get_inputs()[0].name
        batched = np.ascontiguousarray(np.concatenate([example] * -(-batch // len(example)))[:batch])
        for _ in range(3 + runs):
            session.run(None, {name: batched})
        events = json.loads(Path(session.end_profiling()).read_text())
    per_op: collections.Counter = collections.Counter()
    per_run = 3 + runs
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_op[event["args"]["op_name"]] += event["dur"] / 1000 / per_run
    return {op: round(ms, 3) for op, ms in per_op.most_common()}


def cpu_flags() -> dict:
    """Whether this CPU has the int8 dot-product instructions (VNNI) ONNX Runtime's x86 int8 kernels use."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        flags = next(line for line in lines if line.startswith("flags")).split()
        model = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return {"cpu": platform.processor() or platform.machine()}
    return {"cpu": model, "avx512_vnni": "avx512_vnni" in flags, "avx_vnni": "avx_vnni" in flags}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, help="a trained bundle of the recipe (default: train it now)")
    parser.add_argument("--epochs", type=int, help="override the recipe's epochs")
    parser.add_argument("--max-train", type=int, help="train on only this many images (quicker; report it)")
    parser.add_argument("--certify-images", type=int, default=10_000, help="MNIST test images (10 000: all)")
    parser.add_argument("--calibration-images", type=int, default=256)
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"int8 variants to measure, of: {', '.join(VARIANTS)}"
    )
    parser.add_argument("--per-tensor", action="store_true", help="also export and measure per-tensor weights")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "int8_export.json")
    args = parser.parse_args()
    chosen = [name.strip() for name in args.variants.split(",") if name.strip()]
    chosen = [name for name in VARIANTS if name in chosen] + [name for name in chosen if name not in VARIANTS]
    if "default" not in chosen or any(name not in VARIANTS for name in chosen):
        parser.error(f"--variants: name some of {', '.join(VARIANTS)}, default among them")

    import graft
    from graft.exports.certificate import summary

    with tempfile.TemporaryDirectory(prefix="graft-int8-bench-") as tmp:
        source = args.bundle or train(Path(tmp), args)
        bundle_dir = Path(tmp) / "measured"
        shutil.copytree(source, bundle_dir)
        common = {"certify_images": args.certify_images, "threads": args.threads, "timing_runs": 3}
        exports = {"float": graft.export(bundle_dir, format="onnx", **common)}
        files = {"float": (bundle_dir / "model.onnx").read_bytes()}
        variants = {name: VARIANTS[name] for name in chosen}
        if args.per_tensor:
            variants["default, per-tensor"] = {"per_channel": False}
        for name, options in variants.items():
            print(f"int8 {name}…", file=sys.stderr, flush=True)
            exports[name] = graft.export(
                bundle_dir, format="onnx", int8=True, calibration_images=args.calibration_images, **options, **common
            )
            files[name] = (bundle_dir / "model.int8.onnx").read_bytes()
        loaded = graft.load(bundle_dir)
        from graft.exports.evidence import bundle_splits, sample

        splits, _ = bundle_splits(loaded)
        example = next(sample(splits.test, loaded.classes, args.batch, 0, "test").inputs(loaded.spec)).numpy()
        # The float model as torch.onnx writes it, before graft cuts kernels to the taps that see pixels
        # (graft.exports.crop): timed beside the others, to show what the cut is worth to each.
        import torch

        from graft.exports import _to_onnx

        uncut = _to_onnx(loaded.model.eval(), torch.from_numpy(example[:2]), None)[0]
        timed = alternating({**files, UNCUT: uncut}, example, args.rounds, args.runs, args.batch, args.threads)
        cut = {name: record.cropped_convolutions for name, record in exports.items()}
        profiles = {
            name: profile(files[name], example, args.batch, args.threads, args.runs) for name in ("float", "default")
        }
        trained = loaded.provenance
        rows = {}
        for name, record in exports.items():
            c = record.certificate
            assert c is not None
            q = record.quantisation
            rows[name] = {
                "export_options": {} if q is None else variants[name],
                "keep_float": None if q is None else q.keep_float,
                "float_nodes": None if q is None else q.float_nodes,
                "calibration": None if q is None else f"{q.calibration_method} on {q.calibration_images} images",
                "size_bytes": len(files[name]),
                **timed[name],
                "test_images": c.images,
                "accuracy": c.accuracy,
                "float_accuracy": c.float_accuracy,
                "accuracy_drop_points": c.accuracy_drop * 100,
                "top1_agreement": c.top1_agreement,
                "max_abs_logit_delta": c.max_abs_logit_delta,
                "certificate": summary(c),
            }
        base = rows["float"]
        versus = {
            name: {
                "size": row["size_bytes"] / base["size_bytes"],
                "latency_speedup": base["latency_ms"] / row["latency_ms"],
                "throughput_speedup": row["throughput_per_s"] / base["throughput_per_s"],
                "accuracy_drop_points": row["accuracy_drop_points"],
                "targets_met": {
                    "throughput ≥ 2×": row["throughput_per_s"] / base["throughput_per_s"] >= 2,
                    "accuracy loss ≤ 0.1 point": row["accuracy_drop_points"] <= 0.1,
                },
            }
            for name, row in rows.items()
            if name != "float"
        }
        import onnxruntime

        result = {
            "command": " ".join(["bench/int8_export.py", *sys.argv[1:]]),
            "recipe": RECIPE.name,
            "bundle": str(source) if args.bundle else "trained by this run",
            "training": {
                "epochs": trained.epochs,
                "train_images": trained.data.train if trained.data else None,
                "test_acc": loaded.metrics.get("test_acc"),
            },
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, onnxruntime threads {args.threads}",
            **cpu_flags(),
            "onnxruntime": onnxruntime.__version__,
            "load_average_at_end": os.getloadavg(),
            "batch": args.batch,
            "rows": rows,
            "int8_vs_float": versus["default"],
            "variants_vs_float": versus,
            "profile_ms_per_run_by_op": profiles,
            "cropped_convolutions": cut,
            UNCUT: {
                **timed[UNCUT],
                "size_bytes": len(uncut),
                "throughput_vs_float": timed[UNCUT]["throughput_per_s"] / base["throughput_per_s"],
            },
        }
        result["targets_met"] = versus["default"]["targets_met"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(f"| export | size MB | ms/image | images/s at batch {args.batch} | × float | test accuracy | agreement |")
    print("|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        print(
            f"| {name} | {row['size_bytes'] / 1e6:.2f} | {row['latency_ms']:.2f} | {row['throughput_per_s']:.0f} | "
            f"{row['throughput_per_s'] / base['throughput_per_s']:.2f} | {row['accuracy']:.2%} | "
            f"{row['top1_agreement']:.2%} |"
        )
    row = result[UNCUT]
    print(
        f"| {UNCUT} | {row['size_bytes'] / 1e6:.2f} | {row['latency_ms']:.2f} | {row['throughput_per_s']:.0f} | "
        f"{row['throughput_vs_float']:.2f} | — | — |"
    )
    print(f"kernels cut to the taps that see pixels: {len(cut['float'])} convolutions ({', '.join(cut['float'])})")
    print(json.dumps({k: result[k] for k in ("int8_vs_float", "training", "profile_ms_per_run_by_op")}))


if __name__ == "__main__":
    main()
