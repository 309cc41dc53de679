"""Time to accuracy on MNIST: how long a recipe trains before its test accuracy first reaches each threshold.

The recipe trains through `graft.train`; after every epoch the model being evaluated (the EMA when the recipe keeps
one) is scored on the 10 000 MNIST test images. That scoring is not counted: "train time" sums the training steps
of the epochs, "wall" is everything else from the start (data loading, model creation, per-epoch validation).

    uv run python bench/time_to_accuracy.py recipes/mnist-cpu-fast.toml --json bench/results/time_to_accuracy_fast.json
    uv run python bench/time_to_accuracy.py recipes/mnist-cpu-fast.toml --epochs 2        # a quick look

Needs MNIST under $GRAFT_DATA/mnist (or ../shared/datasets/mnist beside the repository).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
THRESHOLDS = (0.99, 0.9944, 0.996)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", type=Path)
    parser.add_argument("--epochs", type=int, help="override the recipe's epochs")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--data-root", default=os.environ.get("GRAFT_DATA") or str(REPO.parent / "shared/datasets"))
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()

    import torch

    import graft
    from graft.data.sources import load_splits
    from graft.evaluation import evaluate_model
    from graft.spec import InputSpec
    from graft.training.config import make_config

    test = load_splits("mnist", args.data_root, download=False).test
    rows: list[dict] = []
    scoring = {"seconds": 0.0}
    started = time.perf_counter()

    def on_epoch(record: dict, model: torch.nn.Module, spec: InputSpec) -> None:
        begin = time.perf_counter()
        result = evaluate_model(model, spec, test, batch_size=512, workers=0)
        model.train()
        scoring["seconds"] += time.perf_counter() - begin
        train_time = sum(r["seconds"] for r in rows) + record["seconds"]
        rows.append(
            {
                "epoch": record["epoch"],
                "seconds": record["seconds"],
                "train_time_s": train_time,
                "wall_s": time.perf_counter() - started - scoring["seconds"],
                "valid_acc": record["valid_acc"],
                "test_acc": result.accuracy,
            }
        )
        print(
            f"epoch {record['epoch']:3d}  train {train_time / 60:6.2f} min  wall {rows[-1]['wall_s'] / 60:6.2f} min  "
            f"valid {record['valid_acc']:.2%}  test {result.accuracy:.2%}",
            flush=True,
        )

    with tempfile.TemporaryDirectory() as tmp:
        overrides = {"epochs": args.epochs, "threads": args.threads, "data_root": args.data_root}
        config = make_config(args.recipe, run_dir=f"{tmp}/run", download=False, **overrides)
        result = graft.train(config, on_epoch=on_epoch)
    reached = {}
    for threshold in THRESHOLDS:
        first = next((r for r in rows if r["test_acc"] >= threshold), None)
        keys = ("epoch", "train_time_s", "wall_s")
        reached[f"{threshold:.2%}"] = None if first is None else {k: first[k] for k in keys}
    summary = {
        "recipe": str(args.recipe),
        "settings": result.bundle.provenance.training,
        "runtime": result.bundle.provenance.runtime,
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
        "epochs": rows,
        "final_test_acc": result.bundle.metrics["test_acc"],
        "time_to": reached,
    }
    print()
    print(f"{'threshold':>10}  {'epoch':>5}  {'train time':>10}  {'wall':>8}")
    for name, hit in reached.items():
        if hit is None:
            print(f"{name:>10}  {'—':>5}  {'not reached':>10}")
        else:
            print(f"{name:>10}  {hit['epoch']:5d}  {hit['train_time_s'] / 60:7.2f} min  {hit['wall_s'] / 60:5.2f} min")
    print(f"final test accuracy (bundle): {summary['final_test_acc']:.2%}")
    if args.json:
        from graft.io import atomic_write_json

        atomic_write_json(args.json, summary)


if __name__ == "__main__":
    main()
