"""Accuracy, training speed and peak memory of the three input modes on MNIST.

Each configuration trains in its own process (so peak RSS is its own) with `graft.train`, from scratch, one epoch
by default, and the table compares test accuracy, train images/s and peak resident memory. "import floor" is the
resident memory right after importing torch, torchvision and timm, before any data or model exists.

    uv run python bench/input_modes.py                      # 3 modes × 32 and 64 px, resnet18, 1 epoch
    uv run python bench/input_modes.py --sizes 32 --epochs 2 --model resnet10t

Needs MNIST under $GRAFT_DATA/mnist (or ../shared/datasets/mnist beside the repository).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _peak_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(mode: str, size: int, args: argparse.Namespace) -> None:
    import timm  # noqa: F401  (the import floor: torch + torchvision + timm)
    import torch  # noqa: F401

    floor = _peak_mb()
    import graft

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        result = graft.train(
            data="mnist",
            data_root=args.data_root,
            model=args.model,
            input_mode=mode,
            size=size,
            epochs=args.epochs,
            batch_size=args.batch_size,
            seed=args.seed,
            max_train=args.max_train,
            run_dir=f"{tmp}/run",
            download=False,
        )
        metrics = result.bundle.metrics
        print(
            "RESULT "
            + json.dumps(
                {
                    "mode": mode,
                    "size": size,
                    "test_acc": metrics["test_acc"],
                    "valid_acc": metrics["valid_acc"],
                    "train_images_per_s": metrics["train_images_per_s"],
                    "train_seconds": metrics["train_seconds"],
                    "wall_seconds": time.perf_counter() - started,
                    "peak_rss_mb": _peak_mb(),
                    "import_floor_mb": floor,
                }
            ),
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--modes", nargs="+", default=["replicate", "stem", "fold"])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-train", type=int, default=None)
    parser.add_argument("--data-root", default=os.environ.get("GRAFT_DATA") or str(REPO.parent / "shared" / "datasets"))
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), args)
        return

    rows = []
    forwarded = ["--model", args.model, "--epochs", str(args.epochs), "--batch-size", str(args.batch_size)]
    forwarded += ["--seed", str(args.seed), "--data-root", args.data_root]
    forwarded += ["--max-train", str(args.max_train)] if args.max_train else []
    for size in args.sizes:
        for mode in args.modes:
            print(f"… {mode} at {size}×{size}", file=sys.stderr, flush=True)
            proc = subprocess.run(
                [sys.executable, __file__, *forwarded, "--child", mode, str(size)],
                capture_output=True,
                text=True,
                check=False,
            )
            lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                sys.exit(f"{mode} {size}: failed\n{proc.stderr[-2000:]}")
            rows.append(json.loads(lines[-1].removeprefix("RESULT ")))
    setting = f"{args.epochs} epoch(s), batch {args.batch_size}, seed {args.seed}, {os.cpu_count()} CPUs"
    print(f"\n{args.model} on MNIST from scratch, {setting}\n")
    print("| mode | size | test acc | valid acc | train img/s | train s | peak RSS MB | import floor MB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['mode']} | {r['size']} | {r['test_acc']:.2%} | {r['valid_acc']:.2%} | {r['train_images_per_s']:.0f} "
            f"| {r['train_seconds']:.0f} | {r['peak_rss_mb']:.0f} | {r['import_floor_mb']:.0f} |"
        )
    if args.json:
        from graft.io import atomic_write_json

        atomic_write_json(args.json, rows)


if __name__ == "__main__":
    main()
