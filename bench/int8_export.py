"""int8 vs float in ONNX Runtime for the ResNet-18 fold recipe on MNIST: size, latency, throughput, accuracy.

Trains recipes/mnist-fold-32.toml (or takes --bundle), exports it with `graft export` as float ONNX and as int8
ONNX (static QDQ, per-channel weights, calibrated on 256 training images), and reports what the int8
certificate measured on the MNIST test split (all 10 000 images by default) plus size, single-image latency and
batched throughput, timed in alternating rounds so that a loaded machine slows both alike. Targets (issue 17):
≥ 2× batched throughput, ≤ 0.1 point accuracy loss.

    uv run python bench/int8_export.py                                  # trains the recipe (1 epoch), then measures
    uv run python bench/int8_export.py --max-train 20000                # a quicker training run (say so)
    uv run python bench/int8_export.py --bundle runs/x/bundle --per-tensor   # also measure per-tensor weights

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


def train(out: Path, args: argparse.Namespace) -> Path:
    command = [sys.executable, "-m", "graft", "train", str(RECIPE), "--offline", "--run-dir", str(out / "run"),
               "--output", str(out / "bundle")]  # fmt: skip
    if args.epochs:
        command += ["--epochs", str(args.epochs)]
    if args.max_train:
        command += ["--max-train", str(args.max_train)]
    subprocess.run(command, check=True)
    return out / "bundle"


def alternating(models: dict[str, bytes], example, rounds: int, runs: int, batch: int, threads: int) -> dict:
    """Median latency and throughput per model over `rounds` rounds that time every model in turn."""
    from graft.exports.certificate import open_session, runner, timings

    runs_of = {name: runner(open_session(data, threads)) for name, data in models.items()}
    figures: dict[str, list[tuple[float, float]]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, run in runs_of.items():
            figures[name].append(timings(run, example, runs, batch))
    return {
        name: {
            "latency_ms": statistics.median(f[0] for f in values),
            "throughput_per_s": statistics.median(f[1] for f in values),
        }
        for name, values in figures.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, help="a trained bundle of the recipe (default: train it now)")
    parser.add_argument("--epochs", type=int, help="override the recipe's epochs")
    parser.add_argument("--max-train", type=int, help="train on only this many images (quicker; report it)")
    parser.add_argument("--certify-images", type=int, default=10_000, help="MNIST test images (10 000: all)")
    parser.add_argument("--calibration-images", type=int, default=256)
    parser.add_argument("--per-tensor", action="store_true", help="also export and measure per-tensor weights")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "int8_export.json")
    args = parser.parse_args()

    import graft
    from graft.exports.certificate import summary

    with tempfile.TemporaryDirectory(prefix="graft-int8-bench-") as tmp:
        source = args.bundle or train(Path(tmp), args)
        bundle_dir = Path(tmp) / "measured"
        shutil.copytree(source, bundle_dir)
        common = {"certify_images": args.certify_images, "threads": args.threads, "timing_runs": args.runs}
        exports = {"float": graft.export(bundle_dir, format="onnx", **common)}
        files = {"float": (bundle_dir / "model.onnx").read_bytes()}
        exports["int8"] = graft.export(
            bundle_dir, format="onnx", int8=True, calibration_images=args.calibration_images, **common
        )
        files["int8"] = (bundle_dir / "model.int8.onnx").read_bytes()
        if args.per_tensor:
            per_tensor = Path(tmp) / "per-tensor"
            shutil.copytree(source, per_tensor)
            exports["int8 per-tensor"] = graft.export(
                per_tensor, int8=True, per_channel=False, calibration_images=args.calibration_images, **common
            )
            files["int8 per-tensor"] = (per_tensor / "model.int8.onnx").read_bytes()
        loaded = graft.load(bundle_dir)
        from graft.exports.evidence import bundle_splits, sample

        splits, _ = bundle_splits(loaded)
        example = next(sample(splits.test, loaded.classes, args.batch, 0, "test").inputs(loaded.spec)).numpy()
        timed = alternating(files, example, args.rounds, args.runs, args.batch, args.threads)
        trained = loaded.provenance
        rows = {}
        for name, record in exports.items():
            c = record.certificate
            assert c is not None
            rows[name] = {
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
        int8 = rows["int8"]
        result = {
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "recipe": RECIPE.name,
            "training": {
                "epochs": trained.epochs,
                "train_images": trained.data.train if trained.data else None,
                "test_acc": loaded.metrics.get("test_acc"),
            },
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, onnxruntime threads {args.threads}",
            "batch": args.batch,
            "rows": rows,
            "int8_vs_float": {
                "size": int8["size_bytes"] / base["size_bytes"],
                "latency_speedup": base["latency_ms"] / int8["latency_ms"],
                "throughput_speedup": int8["throughput_per_s"] / base["throughput_per_s"],
                "accuracy_drop_points": int8["accuracy_drop_points"],
            },
        }
        result["targets_met"] = {
            "throughput ≥ 2×": result["int8_vs_float"]["throughput_speedup"] >= 2,
            "accuracy loss ≤ 0.1 point": int8["accuracy_drop_points"] <= 0.1,
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(f"| export | size MB | ms/image | images/s at batch {args.batch} | test accuracy | agreement |")
    print("|---|---|---|---|---|---|")
    for name, row in rows.items():
        print(
            f"| {name} | {row['size_bytes'] / 1e6:.2f} | {row['latency_ms']:.2f} | {row['throughput_per_s']:.0f} | "
            f"{row['accuracy']:.2%} | {row['top1_agreement']:.2%} |"
        )
    print(json.dumps({k: result[k] for k in ("int8_vs_float", "targets_met", "training")}, ensure_ascii=False))


if __name__ == "__main__":
    main()
