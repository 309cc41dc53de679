"""Training in rounds on the clutter benchmark: cumulative rounds vs naive rounds vs one model from scratch.

Six clutter levels (`graft data clutter`), one round per level, each round warm-started from the previous:

- cumulative: round k trains on the union of levels 1..k (graft rounds' default);
- replay: round k trains on level k plus a seeded `--replay` fraction (default 0.2) of each earlier level;
- naive: round k trains on level k only;
- scratch: one model trained from scratch on all levels at once, with the same total compute as the
  cumulative rounds: epochs = round(sum_k |train set of round k| × epochs / |all levels' train set|).

For each: accuracy on level L's test split after the last round, average accuracy over every level's test split,
and forgetting / backward transfer (Avalanche's definitions; not defined for the single scratch model).

    uv run python bench/rounds_clutter.py                                   # MNIST, 6 levels (long on a CPU)
    uv run python bench/rounds_clutter.py --source digits --size 16 --epochs 2 --max-train 600   # minutes
    uv run python bench/rounds_clutter.py --methods replay --json bench/results/rounds_clutter_replay.json

Writes bench/results/rounds_clutter.json (or --json PATH). MNIST is read from $GRAFT_DATA (or
../shared/datasets beside the repository); digits needs nothing.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def data_root(explicit: str | None) -> str:
    return explicit or os.environ.get("GRAFT_DATA") or str(REPO.parent / "shared" / "datasets")


def clutter(args: argparse.Namespace, work: Path) -> Path:
    """The benchmark folder: reused when it holds clutter.json, else built."""
    from graft.data import make_clutter
    from graft.data.clutter import MANIFEST

    out = Path(args.clutter) if args.clutter else work / f"clutter-{args.source}"
    if not (out / MANIFEST).is_file():
        make_clutter(
            args.source,
            out,
            levels=args.levels,
            size=args.clutter_size,
            max_train=args.max_train,
            max_test=args.max_test,
            data_root=data_root(args.data_root),
            download=False,
            preview=False,
        )
    return out


def settings(args: argparse.Namespace) -> dict:
    return {
        "model": args.model,
        "input_mode": args.input_mode,
        "size": args.size,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "precision": args.precision,
        "seed": args.seed,
        "workers": args.workers,
        "threads": args.threads,
    }


def run_rounds(levels: list[str], work: Path, name: str, args: argparse.Namespace) -> dict:
    import graft.rounds as rounds
    from graft import record as bundle_record

    project = work / name
    started = time.perf_counter()
    rounds.init(project, max_forgetting=None, force=True, **settings(args))
    for k, source in enumerate(levels, start=1):
        replay = args.replay if name == "replay" and k > 1 else None
        rounds.add(project, f"level-{k}", source, naive=name == "naive", replay=replay)
    summary = rounds.train(project)
    trained = [bundle_record.read(project / r["bundle"]) for r in summary["rounds"]]
    seen = sum(meta.provenance.data.train * args.epochs for meta in trained)
    final = summary["final"]
    return {
        "method": name,
        "final_level_accuracy": summary["matrix"][-1][-1],
        "average_accuracy": final["average_accuracy"],
        "forgetting": final["forgetting"],
        "backward_transfer": final["backward_transfer"],
        "max_forgetting": final["max_forgetting"],
        "matrix": summary["matrix"],
        "images_seen": seen,
        "seconds": round(time.perf_counter() - started, 1),
    }


def run_scratch(levels: list[str], work: Path, images_budget: int, args: argparse.Namespace) -> dict:
    """One model on all levels from scratch; epochs chosen so it sees about as many images as the rounds did."""
    import graft
    from graft.data.sources import load_splits
    from graft.io import atomic_write_json
    from graft.rounds.run import test_accuracy

    started = time.perf_counter()
    mix = atomic_write_json(work / "scratch" / "data.json", {"parts": [{"source": s} for s in levels]})
    splits = load_splits(f"mix:{mix}", valid_fraction=0.2, seed=args.seed)  # as graft.train splits
    per_epoch = len(splits.train)
    epochs = max(1, round(images_budget / per_epoch))
    result = graft.train(
        data=f"mix:{mix}", run_dir=str(work / "scratch" / "run"), force=True, **{**settings(args), "epochs": epochs}
    )
    row = [test_accuracy(result.bundle, level_test) for level_test in splits.test.parts]  # each level's own test
    return {
        "method": "scratch",
        "final_level_accuracy": row[-1],
        "average_accuracy": float(np.mean(row)),
        "forgetting": None,
        "backward_transfer": None,
        "max_forgetting": None,
        "matrix": [row],
        "epochs": epochs,
        "images_seen": per_epoch * epochs,
        "seconds": round(time.perf_counter() - started, 1),
    }


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.1%}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="mnist", help="mnist or digits (digits: small and offline)")
    parser.add_argument("--clutter", help="reuse this clutter folder instead of building one")
    parser.add_argument("--levels", type=int, default=6)
    parser.add_argument(
        "--methods", default="cumulative,naive,scratch", help="comma list of cumulative, replay, naive, scratch"
    )
    parser.add_argument("--replay", type=float, default=0.2, help="replay: fraction of each earlier level")
    parser.add_argument("--clutter-size", type=int, default=32, help="image size of the clutter PNGs")
    parser.add_argument("--max-train", type=int, help="training images per level")
    parser.add_argument("--max-test", type=int, help="test images per level")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--input-mode", default="replicate")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2, help="epochs per round")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=4e-3)
    parser.add_argument(
        "--precision", default="fp32", help="fp32 (default: faster than bf16 for ResNet-18 at 32 px on a CPU) or auto"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--data-root")
    parser.add_argument("--work", default=str(REPO / "runs" / "rounds_clutter"))
    parser.add_argument("--json", default=str(REPO / "bench" / "results" / "rounds_clutter.json"))
    args = parser.parse_args()

    work = Path(args.work)
    folder = clutter(args, work)
    levels = [f"folder:{(folder / f'level-{k}').resolve()}" for k in range(1, args.levels + 1)]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(methods) - {"cumulative", "replay", "naive", "scratch"}
    if unknown or ("scratch" in methods and "cumulative" not in methods):
        parser.error(f"--methods: unknown {sorted(unknown)}" if unknown else "scratch needs cumulative's budget")
    rows = [run_rounds(levels, work, name, args) for name in methods if name != "scratch"]
    if "scratch" in methods:
        budget = next(row["images_seen"] for row in rows if row["method"] == "cumulative")
        rows.append(run_scratch(levels, work, budget, args))

    print(f"\n{'method':<11} {'level ' + str(args.levels):>9} {'avg acc':>8} {'forget':>8} {'BWT':>8} {'seen':>9}")
    for row in rows:
        print(
            f"{row['method']:<11} {_pct(row['final_level_accuracy']):>9} {_pct(row['average_accuracy']):>8} "
            f"{_pct(row['forgetting']):>8} {_pct(row['backward_transfer']):>8} {row['images_seen']:>9}  "
            f"{row['seconds']:.0f} s"
        )
    record = {
        "bench": "rounds_clutter",
        "args": vars(args),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "rows": rows,
    }
    from graft.io import atomic_write_json

    atomic_write_json(args.json, record)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
