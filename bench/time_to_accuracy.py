"""Time to accuracy on MNIST: how long a recipe trains before its test accuracy first reaches each threshold.

The clock starts before `import torch`, so "wall" is the whole run: imports, data loading, model creation, every
epoch's training and validation, and the end of the run (BatchNorm check, test, bundle). After every epoch the
model being evaluated (the EMA when the recipe keeps one) is also scored on the 10 000 MNIST test images, only to
find when each threshold is first reached: that scoring is taken out of both clocks. "CPU" is the process's
user + system time over the same span: on a machine shared with other work, wall time depends on the neighbours
and CPU time much less, so both are printed. "train" sums the training steps of the epochs.

    uv run python bench/time_to_accuracy.py recipes/mnist-cpu-5min.toml --seeds 0 1 2 --json results.json
    uv run python bench/time_to_accuracy.py recipes/mnist-cpu-5min.toml --seeds 0 1 2 --jobs 3 --threads 1
    uv run python bench/time_to_accuracy.py recipes/mnist-cpu-fast.toml --epochs 2        # a quick look

With --seeds each seed runs in its own process (--jobs of them at once) and a summary gives the mean.
Needs MNIST under $GRAFT_DATA/mnist (or ../shared/datasets/mnist beside the repository).
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()  # before the heavy imports: they are part of the wall clock

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
THRESHOLDS = (0.99, 0.9944, 0.996, 0.997)  # 99.44 %: the reference; 99.70 %: issue 16 target 2
TARGET = "99.44%"


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_one(args: argparse.Namespace, seed: int | None) -> dict:
    """One training run in this process; returns its summary."""
    import torch

    import graft
    from graft.data.sources import load_splits
    from graft.evaluation import evaluate_model
    from graft.spec import InputSpec
    from graft.training.config import make_config

    test = load_splits("mnist", args.data_root, download=False).test
    rows: list[dict] = []
    scoring = {"seconds": 0.0, "cpu": 0.0}

    def on_epoch(record: dict, model: torch.nn.Module, spec: InputSpec) -> None:
        begin, begin_cpu = time.perf_counter(), cpu_seconds()
        result = evaluate_model(model, spec, test, batch_size=512, workers=0)
        model.train()
        scoring["seconds"] += time.perf_counter() - begin
        scoring["cpu"] += cpu_seconds() - begin_cpu
        train_time = sum(r["seconds"] for r in rows) + record["seconds"]
        rows.append(
            {
                "epoch": record["epoch"],
                "seconds": record["seconds"],
                "train_time_s": train_time,
                "wall_s": time.perf_counter() - STARTED - scoring["seconds"],
                "cpu_s": cpu_seconds() - scoring["cpu"],
                "valid_acc": record["valid_acc"],
                "test_acc": result.accuracy,
            }
        )
        print(
            f"{'' if seed is None else f'seed {seed}  '}epoch {record['epoch']:3d}  train {train_time / 60:6.2f} min  "
            f"wall {rows[-1]['wall_s'] / 60:6.2f} min  CPU {rows[-1]['cpu_s'] / 60:6.2f} min  "
            f"valid {record['valid_acc']:.2%}  test {result.accuracy:.2%}",
            flush=True,
        )

    with tempfile.TemporaryDirectory() as tmp:
        overrides = {"epochs": args.epochs, "threads": args.threads, "data_root": args.data_root, "seed": seed}
        config = make_config(args.recipe, run_dir=f"{tmp}/run", download=False, **overrides)
        result = graft.train(config, on_epoch=on_epoch)
    reached = {}
    for threshold in THRESHOLDS:
        first = next((r for r in rows if r["test_acc"] >= threshold), None)
        keys = ("epoch", "train_time_s", "wall_s", "cpu_s")
        reached[f"{threshold:.2%}"] = None if first is None else {k: first[k] for k in keys}
    return {
        "recipe": str(args.recipe),
        "seed": config.seed,
        "settings": result.bundle.provenance.training,
        "runtime": result.bundle.provenance.runtime,
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
        "epochs": rows,
        "final_test_acc": result.bundle.metrics["test_acc"],
        "total_wall_s": time.perf_counter() - STARTED - scoring["seconds"],
        "total_cpu_s": cpu_seconds() - scoring["cpu"],
        "load_average": os.getloadavg(),
        "time_to": reached,
    }


def print_one(summary: dict) -> None:
    print()
    print(f"{'threshold':>10}  {'epoch':>5}  {'train time':>10}  {'wall':>8}  {'CPU':>8}")
    for name, hit in summary["time_to"].items():
        if hit is None:
            print(f"{name:>10}  {'—':>5}  {'not reached':>10}")
        else:
            print(
                f"{name:>10}  {hit['epoch']:5d}  {hit['train_time_s'] / 60:7.2f} min  {hit['wall_s'] / 60:5.2f} min  "
                f"{hit['cpu_s'] / 60:5.2f} min"
            )
    print(
        f"final test accuracy (bundle): {summary['final_test_acc']:.2%}; whole run {summary['total_wall_s'] / 60:.2f} "
        f"min wall, {summary['total_cpu_s'] / 60:.2f} min CPU (user+sys)"
    )


def run_seeds(args: argparse.Namespace) -> dict:
    """Each seed in its own process (`--jobs` at once); the table and the mean over seeds."""
    with tempfile.TemporaryDirectory() as tmp:
        pending = list(args.seeds)
        running: list[tuple[int, subprocess.Popen, Path]] = []
        results: dict[int, dict] = {}
        while pending or running:
            while pending and len(running) < args.jobs:
                seed = pending.pop(0)
                out = Path(tmp) / f"seed{seed}.json"
                command = [sys.executable, __file__, str(args.recipe), "--seed", str(seed), "--json", str(out)]
                command += ["--data-root", args.data_root]
                for flag in ("epochs", "threads"):
                    if getattr(args, flag) is not None:
                        command += [f"--{flag}", str(getattr(args, flag))]
                running.append((seed, subprocess.Popen(command), out))
            time.sleep(1)
            for item in list(running):
                seed, process, out = item
                if process.poll() is not None:
                    running.remove(item)
                    if process.returncode != 0:
                        raise SystemExit(f"seed {seed} failed with exit code {process.returncode}")
                    results[seed] = json.loads(out.read_text())
                    _print_seed_row(results[seed])
    runs = [results[seed] for seed in args.seeds]
    hits = [run["time_to"][TARGET] for run in runs]
    mean = {
        "final_test_acc": sum(r["final_test_acc"] for r in runs) / len(runs),
        "total_wall_s": sum(r["total_wall_s"] for r in runs) / len(runs),
        "total_cpu_s": sum(r["total_cpu_s"] for r in runs) / len(runs),
        f"every seed reached {TARGET}": all(hit is not None for hit in hits),
    }
    if all(hit is not None for hit in hits):
        mean[f"to {TARGET} wall_s"] = sum(h["wall_s"] for h in hits) / len(hits)
        mean[f"to {TARGET} cpu_s"] = sum(h["cpu_s"] for h in hits) / len(hits)
    print(
        f"\nmean of {len(runs)} seeds: final test accuracy {mean['final_test_acc']:.2%}; whole run "
        f"{mean['total_wall_s'] / 60:.2f} min wall, {mean['total_cpu_s'] / 60:.2f} min CPU"
        + (
            f"; {TARGET} after {mean[f'to {TARGET} wall_s'] / 60:.2f} min wall, {mean[f'to {TARGET} cpu_s'] / 60:.2f} "
            "min CPU"
            if f"to {TARGET} wall_s" in mean
            else f"; not every seed reached {TARGET}"
        )
    )
    return {"recipe": str(args.recipe), "jobs": args.jobs, "runs": runs, "mean": mean}


def _print_seed_row(run: dict) -> None:
    hit = run["time_to"][TARGET]
    reach = (
        f"{TARGET} at epoch {hit['epoch']}: {hit['wall_s'] / 60:.2f} min wall, {hit['cpu_s'] / 60:.2f} min CPU"
        if hit
        else f"{TARGET} not reached"
    )
    print(
        f"seed {run['seed']}: final test {run['final_test_acc']:.2%}; {reach}; whole run "
        f"{run['total_wall_s'] / 60:.2f} min wall, {run['total_cpu_s'] / 60:.2f} min CPU "
        f"(load average then {run['load_average'][0]:.1f})",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", type=Path)
    parser.add_argument("--epochs", type=int, help="override the recipe's epochs")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--seed", type=int, help="override the recipe's seed (one run in this process)")
    parser.add_argument("--seeds", type=int, nargs="+", help="one run per seed, each in its own process")
    parser.add_argument("--jobs", type=int, default=1, help="with --seeds: how many runs at once")
    parser.add_argument("--data-root", default=os.environ.get("GRAFT_DATA") or str(REPO.parent / "shared/datasets"))
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    if args.seeds:
        summary = run_seeds(args)
    else:
        summary = run_one(args, args.seed)
        print_one(summary)
    if args.json:
        from graft.io import atomic_write_json

        atomic_write_json(args.json, summary)


if __name__ == "__main__":
    main()
