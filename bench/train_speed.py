"""Training speed on this CPU: images/s, seconds per epoch and peak memory, per setting.

Each row trains in its own process (so its peak RSS is its own) on MNIST through `graft.train`, and the table
compares float32 with bfloat16 autocast, channels-last on and off, torch.compile, and — for the `transfer`
strategy — the feature cache against running the frozen backbone every epoch.

    uv run python bench/train_speed.py --json bench/results/train_speed.json
    uv run python bench/train_speed.py --only resnet18 --max-train 3000

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

# (label, settings): finetune rows at the sizes the recipes use, then transfer with and without the cache.
ROWS: list[tuple[str, dict]] = [
    ("resnet18 32px fp32", {"model": "resnet18", "size": 32, "precision": "fp32"}),
    ("resnet18 32px bf16", {"model": "resnet18", "size": 32, "precision": "bf16"}),
    ("resnet18 32px bf16 channels-last", {"model": "resnet18", "size": 32, "precision": "bf16", "channels_last": True}),
    ("resnet18 32px fp32 compile", {"model": "resnet18", "size": 32, "precision": "fp32", "compile": True}),
    ("densenet121 64px fp32", {"model": "densenet121", "size": 64, "precision": "fp32", "max_train": 1024}),
    ("densenet121 64px bf16", {"model": "densenet121", "size": 64, "precision": "bf16", "max_train": 1024}),
    (
        "densenet121 64px bf16 channels-last",
        {"model": "densenet121", "size": 64, "precision": "bf16", "channels_last": True, "max_train": 1024},
    ),
    (
        "resnet18 32px transfer, backbone every epoch",
        {"model": "resnet18", "size": 32, "strategy": "transfer", "feature_cache": False},
    ),
    (
        "resnet18 32px transfer, feature cache",
        {"model": "resnet18", "size": 32, "strategy": "transfer", "feature_cache": True},
    ),
]


def _peak_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(label: str, settings: dict, args: argparse.Namespace) -> None:
    import graft

    settings = {"max_train": args.max_train, **settings}  # DenseNet rows use fewer images (slow at 64 px)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        result = graft.train(
            data="mnist",
            data_root=args.data_root,
            input_mode="fold",
            epochs=args.epochs,
            batch_size=128,
            run_dir=f"{tmp}/run",
            download=False,
            **settings,
        )
        total = time.perf_counter() - started
    history = result.history
    # The first epoch pays one-off costs (compilation, the feature cache itself); later epochs show the steady state.
    steady = history[1:] or history
    print(
        "RESULT "
        + json.dumps(
            {
                "label": label,
                "images": result.bundle.provenance.data.train,
                "first_epoch_s": history[0]["seconds"],
                "epoch_s": sum(h["seconds"] for h in steady) / len(steady),
                "images_per_s": sum(h["images_per_s"] for h in steady) / len(steady),
                "total_s": total,
                "peak_rss_mb": _peak_mb(),
                "test_acc": result.bundle.metrics["test_acc"],
            }
        ),
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=2, help="the first epoch is reported apart (warm-up costs)")
    parser.add_argument("--max-train", type=int, default=6000, help="training images per epoch")
    parser.add_argument("--only", help="run the rows whose label contains this text")
    parser.add_argument("--data-root", default=os.environ.get("GRAFT_DATA") or str(REPO.parent / "shared/datasets"))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        label = args.child
        child(label, dict(ROWS)[label], args)
        return
    results = []
    for label, _ in ROWS:
        if args.only and args.only not in label:
            continue
        command = [sys.executable, __file__, "--child", label, "--epochs", str(args.epochs)]
        command += ["--max-train", str(args.max_train), "--data-root", args.data_root]
        done = subprocess.run(command, capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode != 0 or not lines:
            print(f"{label}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
            continue
        results.append(json.loads(lines[-1][len("RESULT ") :]))
        row = results[-1]
        print(
            f"{row['label']:45s} {row['images_per_s']:8.0f} img/s  {row['epoch_s']:7.1f} s/epoch  "
            f"first {row['first_epoch_s']:7.1f} s  peak {row['peak_rss_mb']:6.0f} MB",
            flush=True,
        )
    print()
    print("| setting | images/epoch | train img/s | s/epoch | first epoch s | run total s | peak RSS MB |")
    print("|---|---|---|---|---|---|---|")
    for row in results:
        print(
            f"| {row['label']} | {row['images']} | {row['images_per_s']:.0f} | {row['epoch_s']:.1f} "
            f"| {row['first_epoch_s']:.1f} | {row['total_s']:.0f} | {row['peak_rss_mb']:.0f} |"
        )
    if args.json:
        from graft.io import atomic_write_json

        atomic_write_json(args.json, {"epochs": args.epochs, "max_train": args.max_train, "rows": results})


if __name__ == "__main__":
    main()
