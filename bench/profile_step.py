"""Where a training step's time goes, per batch: collation, augmentation, input conversion, forward, backward,
optimizer and the Python around them, for a recipe's own data path (graft.data.loader, graft.training.augment,
graft.training.steps' order of operations).

Each phase is timed between the same calls `graft.training.steps` makes (PyTorch on CPU runs eagerly, so a phase's
time is spent when its call returns), in CPU time of the process (user+sys, `time.process_time`) and in wall time.
On a machine shared with other work, CPU time is the figure to read: wall time then depends on the neighbours.
The first `--warmup` batches are not counted.
"Python and bookkeeping" is the rest of the loop: the loss's `.item()`, accuracy, the schedule's step, the loop.

    uv run python bench/profile_step.py recipes/mnist-cpu-fast.toml
    uv run python bench/profile_step.py recipes/mnist-cpu-5min.toml --batches 40

Needs MNIST under $GRAFT_DATA/mnist (or ../shared/datasets/mnist beside the repository).
"""

from __future__ import annotations

import argparse
import itertools
import os
import resource
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PHASES = ("collate", "augment", "to_input", "forward", "backward", "optimizer", "python")


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", type=Path)
    parser.add_argument("--batches", type=int, default=30, help="timed batches")
    parser.add_argument("--warmup", type=int, default=5, help="untimed batches first")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override recipe settings")
    parser.add_argument("--data-root", default=os.environ.get("GRAFT_DATA") or str(REPO.parent / "shared/datasets"))
    args = parser.parse_args()

    import torch
    import torch.nn.functional as F

    from graft.data.loader import iter_batches
    from graft.data.preprocess import to_model_input
    from graft.data.sources import load_splits
    from graft.models.factory import count_parameters, create_model
    from graft.training.augment import make_augment
    from graft.training.config import ARCHITECTURE_DEFAULTS, make_config
    from graft.training.distributed import World
    from graft.training.optim import make_optimizer, make_schedule
    from graft.training.runtime import resolve_runtime

    overrides = dict(item.split("=", 1) for item in args.set)
    typed = {key: _typed(value) for key, value in overrides.items()}
    config = make_config(args.recipe, threads=args.threads, data_root=args.data_root, download=False, **typed)
    filled = {key: getattr(config, key) or value for key, value in ARCHITECTURE_DEFAULTS.items()}
    runtime = resolve_runtime(config, World())
    torch.set_num_threads(runtime.threads)
    torch.manual_seed(config.seed)
    splits = load_splits("mnist", args.data_root, valid_fraction=config.valid_fraction, seed=0, download=False)
    model, _, spec, _ = create_model(
        filled["model"],
        10,
        input_mode=filled["input_mode"],
        head=filled["head"],
        size=filled["size"],
        timm_kwargs=config.model_kwargs,
    )
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    model.train()
    forward = torch.compile(model) if config.compile else model
    total = args.batches + args.warmup
    optimizer = make_optimizer(model, config)
    schedule = make_schedule(optimizer, config, total)
    augment = make_augment(config)
    batches = iter_batches(splits.train, spec, config.batch_size, shuffle=True, seed=1, drop_last=True, workers=0)
    walls, cpus = dict.fromkeys(PHASES, 0.0), dict.fromkeys(PHASES, 0.0)
    cpu_start = wall_start = 0.0
    for k in range(total):
        if k == args.warmup:
            walls, cpus = dict.fromkeys(PHASES, 0.0), dict.fromkeys(PHASES, 0.0)
            cpu_start, wall_start = _cpu_seconds(), time.perf_counter()
        marks = [(time.perf_counter(), time.process_time())]
        images, labels = next(batches)
        marks.append((time.perf_counter(), time.process_time()))
        if augment is not None:
            images = augment(images)
        marks.append((time.perf_counter(), time.process_time()))
        x = runtime.to_input(to_model_input(images, spec))
        marks.append((time.perf_counter(), time.process_time()))
        with runtime.autocast():
            logits = forward(x)
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=config.label_smoothing)
        marks.append((time.perf_counter(), time.process_time()))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        marks.append((time.perf_counter(), time.process_time()))
        optimizer.step()
        marks.append((time.perf_counter(), time.process_time()))
        schedule.step()
        _ = loss.item(), int((logits.argmax(dim=1) == labels).sum()), bool(torch.isfinite(loss))
        marks.append((time.perf_counter(), time.process_time()))
        for phase, (before, after) in zip(PHASES, itertools.pairwise(marks), strict=True):
            walls[phase] += after[0] - before[0]
            cpus[phase] += after[1] - before[1]
    wall = time.perf_counter() - wall_start
    cpu = _cpu_seconds() - cpu_start
    step = cpu / args.batches
    print(
        f"{args.recipe.name}: {filled['model']} ({count_parameters(model) / 1e6:.3f} M parameters) "
        f"{spec.size[0]}px {filled['input_mode']}, batch {config.batch_size}, augment {config.augment}"
        f"{' (' + config.augment_engine + ')' if config.augment != 'none' else ''}, {runtime.describe()}"
    )
    print(f"{'phase':<12} {'CPU ms/batch':>12} {'share':>6} {'wall ms/batch':>14}")
    for phase in PHASES:
        share = cpus[phase] / max(sum(cpus.values()), 1e-9)
        cpu_ms, wall_ms = cpus[phase] / args.batches * 1e3, walls[phase] / args.batches * 1e3
        print(f"{phase:<12} {cpu_ms:12.1f} {share:6.1%} {wall_ms:14.1f}")
    print(
        f"{'step':<12} {step * 1e3:12.1f}  → {config.batch_size / step:.0f} img per CPU-second; "
        f"{config.batch_size * args.batches / wall:.0f} img/s wall with {cpu / wall:.2f} cores busy "
        f"(load average {os.getloadavg()[0]:.1f})"
    )


def _typed(value: str) -> object:
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(value.lower(), value)


if __name__ == "__main__":
    main()
