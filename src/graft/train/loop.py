"""`graft train`: data → model → epochs with progress → run directory → bundle."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

from graft._version import __version__
from graft.bundle import Bundle, check_replaceable
from graft.data.base import ImageSet, Splits
from graft.data.loader import count_batches, iter_batches
from graft.data.preprocess import to_model_input
from graft.data.sources import load_splits, normalise_source, source_label
from graft.errors import GraftError
from graft.evaluate import EvalResult, evaluate_model, write_eval_outputs
from graft.io import atomic_write_json
from graft.models.factory import count_parameters, create_model, resolve_model
from graft.models.weights import TransferReport
from graft.progress import batch_progress
from graft.progress import console as default_console
from graft.spec import InputSpec
from graft.train.config import TrainConfig, make_config
from graft.train.optim import make_optimizer, make_schedule

LOG_EVERY_S = 30.0  # progress line interval when stderr is not a terminal (CI, nohup, pipes)


@dataclass
class TrainResult:
    bundle: Bundle
    run_dir: Path
    history: list[dict]


def _run_dir(config: TrainConfig) -> Path:
    if config.run_dir:
        return Path(config.run_dir)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{source_label(config.data)}-{config.model}-{config.input_mode}-{stamp}"


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def train(
    config: TrainConfig | None = None,
    *,
    recipe: str | Path | None = None,
    console: Console | None = None,
    **overrides,
) -> TrainResult:
    """Fine-tune a timm model on a data source and write a bundle.

    `graft.train(data="mnist", model="resnet18", input_mode="fold", size=32, epochs=1)` is the simple call;
    every field of `TrainConfig` can be given here, in a TOML recipe, or both (keywords win).
    """
    config = config or make_config(recipe, **overrides)
    name, kwargs = resolve_model(config.model, config.weights, config.model_kwargs)
    config = config.model_copy(update={"data": normalise_source(config.data), "model": name, "model_kwargs": kwargs})
    out = console or default_console()
    run_dir = _run_dir(config)
    bundle_dir = Path(config.output) if config.output else run_dir / "bundle"
    _check_outputs(bundle_dir, run_dir, config.force)
    torch.set_num_threads(config.threads or os.cpu_count() or 1)
    _seed_everything(config.seed)

    splits, train_set = _load_data(config, out)
    classes = splits.classes
    model, arch, spec, report = create_model(
        config.model,
        len(classes),
        input_mode=config.input_mode,
        head=config.head,
        size=config.size,
        pretrained=config.pretrained,
        weights=config.weights,
        timm_kwargs=config.model_kwargs,
    )
    spec = dataclasses.replace(spec, resize=config.resize)
    out.print(
        f"graft train: {config.model} ({count_parameters(model) / 1e6:.2f} M parameters), mode {config.input_mode}, "
        f"{spec.size[0]}×{spec.size[1]}×{spec.channels}, {config.data}: {len(train_set)} train / "
        f"{len(splits.valid)} valid / {len(splits.test)} test, {len(classes)} classes"
    )
    if report is not None:
        for line in report.lines():
            out.print(line, markup=False, highlight=False)

    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "config.json", config.model_dump())
    if report is not None:
        atomic_write_json(run_dir / "transfer.json", report.to_dict())
    else:
        (run_dir / "transfer.json").unlink(missing_ok=True)  # a --force re-run must not keep an old report
    metrics_path = run_dir / "metrics.jsonl"
    metrics_path.write_text("")

    steps = count_batches(len(train_set), config.batch_size, drop_last=_drop_last(train_set, config))
    optimizer = make_optimizer(model, config)
    schedule = make_schedule(optimizer, config, steps)
    evaluate = partial(
        evaluate_model, model, spec, classes=classes, batch_size=config.batch_size, workers=config.workers, console=out
    )
    history: list[dict] = []
    started = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        record = _train_epoch(model, spec, train_set, optimizer, schedule, steps, config, epoch, out)
        valid = evaluate(splits.valid)
        record.update(valid_loss=valid.loss, valid_acc=valid.accuracy)
        history.append(record)
        with metrics_path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        out.print(
            f"epoch {epoch}/{config.epochs}  loss {record['train_loss']:.4f}  acc {record['train_acc']:.2%}  "
            f"valid loss {valid.loss:.4f}  valid acc {valid.accuracy:.2%}  "
            f"{record['images_per_s']:.0f} img/s  {record['seconds']:.0f}s"
        )
        _plot_curves(history, run_dir, config)

    test = evaluate(splits.test)
    out.print(f"test: loss {test.loss:.4f}  accuracy {test.accuracy:.2%} on {len(splits.test)} images")
    final = _final_metrics(history, test, time.perf_counter() - started)
    provenance = _provenance(config, splits, train_set, report, run_dir)
    bundle = Bundle(model.eval(), arch, spec, list(classes), final, provenance)
    bundle.save(bundle_dir, overwrite=config.force)
    eval_files = write_eval_outputs(test, splits.test, run_dir, title=f"{config.data} test")
    _write_report(run_dir, config, final, history, report, eval_files, bundle_dir)
    out.print(f"bundle: {bundle_dir}   run: {run_dir} (report.html, curves.png, metrics.jsonl)")
    return TrainResult(bundle, run_dir, history)


def _check_outputs(bundle_dir: Path, run_dir: Path, force: bool) -> None:
    """Checked before training as well as at save time, so a mistake costs seconds rather than a whole run."""
    bundle, run = bundle_dir.resolve(), run_dir.resolve()
    if bundle == run or run.is_relative_to(bundle):
        raise GraftError(
            f"the bundle ({bundle_dir}) cannot be the run directory or contain it; choose another --output"
        )
    for existing in (bundle_dir, run_dir / "metrics.jsonl"):
        if existing.exists() and not force:
            raise GraftError(f"{existing} already exists; choose another --output/--run-dir or pass --force")
    if force:
        check_replaceable(bundle_dir)


def _load_data(config: TrainConfig, out: Console) -> tuple[Splits, ImageSet]:
    """The splits, and the training set actually used (`max_train` takes a seeded sample)."""
    splits = load_splits(
        config.data,
        config.data_root,
        valid_fraction=config.valid_fraction,
        seed=config.seed,
        download=config.download,
        report=lambda line: out.print(line, style="yellow", markup=False),
    )
    train_set = splits.train
    if config.max_train and config.max_train < len(train_set):
        keep = np.sort(np.random.default_rng(config.seed).permutation(len(train_set))[: config.max_train])
        train_set = train_set.subset(keep)
    if len(train_set) < 2:
        raise GraftError(f"{config.data}: {len(train_set)} training image(s) after the split; need at least 2")
    for name, part in (("valid", splits.valid), ("test", splits.test)):
        if len(part) == 0:
            raise GraftError(f"{config.data}: the {name} split is empty; use more images or another --valid-fraction")
    return splits, train_set


def _final_metrics(history: list[dict], test: EvalResult, seconds: float) -> dict:
    last = history[-1]
    return {
        "train_loss": last["train_loss"],
        "train_acc": last["train_acc"],
        "valid_loss": last["valid_loss"],
        "valid_acc": last["valid_acc"],
        "test_loss": test.loss,
        "test_acc": test.accuracy,
        "train_images_per_s": float(np.mean([h["images_per_s"] for h in history])),
        "train_seconds": seconds,
    }


def _provenance(
    config: TrainConfig, splits: Splits, train_set: ImageSet, report: TransferReport | None, run_dir: Path
) -> dict:
    """Where a bundle came from: enough to rebuild its splits (`graft eval`) and to repeat its training."""
    return {
        "graft_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "data": {
            "source": config.data,
            "data_root": config.data_root,
            "classes": len(splits.classes),
            "train": len(train_set),
            "valid": len(splits.valid),
            "test": len(splits.test),
            "valid_fraction": config.valid_fraction,
            "split_seed": config.seed,
        },
        "training": config.model_dump(exclude={"output", "run_dir", "force", "threads", "workers"}),
        "epochs": config.epochs,
        "seed": config.seed,
        "transfer": report.to_dict() if report is not None else None,
        "run_dir": str(run_dir),
    }


def _drop_last(train_set: ImageSet, config: TrainConfig) -> bool:
    """Drop a ragged last batch (a batch of one breaks BatchNorm) unless it is the only batch."""
    return len(train_set) > config.batch_size


def _train_epoch(
    model: nn.Module,
    spec: InputSpec,
    train_set: ImageSet,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    steps: int,
    config: TrainConfig,
    epoch: int,
    out: Console,
) -> dict:
    model.train()
    seen = correct = 0
    loss_sum = last_log = 0.0
    started = time.perf_counter()
    batches = iter_batches(
        train_set,
        spec,
        config.batch_size,
        shuffle=True,
        seed=config.seed * 1000 + epoch,
        drop_last=_drop_last(train_set, config),
        workers=config.workers,
    )
    with batch_progress(out) as progress:
        task = progress.add_task(f"epoch {epoch}/{config.epochs}", total=steps, stats="")
        for images, labels in batches:
            logits = model(to_model_input(images, spec))
            loss = F.cross_entropy(logits, labels, label_smoothing=config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            n = len(labels)
            seen += n
            loss_sum += loss.item() * n
            correct += int((logits.argmax(dim=1) == labels).sum())
            elapsed = time.perf_counter() - started
            stats = f"loss {loss_sum / seen:.4f} acc {correct / seen:.2%} {seen / elapsed:.0f} img/s"
            progress.update(task, advance=1, stats=stats)
            if not out.is_terminal and elapsed - last_log >= LOG_EVERY_S:  # logs get a line now and then
                done = progress.tasks[0].completed
                eta = elapsed / done * (steps - done)
                out.print(f"  epoch {epoch}: {done}/{steps} batches  {stats}  ETA {eta:.0f}s")
                last_log = elapsed
    seconds = time.perf_counter() - started
    return {
        "epoch": epoch,
        "train_loss": loss_sum / max(seen, 1),
        "train_acc": correct / max(seen, 1),
        "lr": optimizer.param_groups[0]["lr"],
        "seconds": seconds,
        "images_per_s": seen / seconds,
    }


def _plot_curves(history: list[dict], run_dir: Path, config: TrainConfig) -> None:
    """Redrawn after every epoch, so a long run's curves can be watched while it trains."""
    from graft.report.plots import plot_learning_curves

    plot_learning_curves(
        history, run_dir / "curves.png", title=f"{config.model} on {config.data} ({config.input_mode})"
    )


def _short(value: object) -> object:
    """Four significant digits: enough to read a table, and what the figures show anyway."""
    return f"{value:.4g}" if isinstance(value, float) else value


def _write_report(
    run_dir: Path,
    config: TrainConfig,
    final: dict,
    history: list[dict],
    report: TransferReport | None,
    eval_files: dict,
    bundle_dir: Path,
) -> None:
    from graft.report.html import write_html_report

    summary = {
        "model": config.model,
        "data": config.data,
        "input mode": config.input_mode,
        "size": config.size,
        "epochs": config.epochs,
        "bundle": str(bundle_dir),
        "test accuracy": f"{final['test_acc']:.2%}",
        "valid accuracy": f"{final['valid_acc']:.2%}",
        "train images/s": f"{final['train_images_per_s']:.0f}",
        "time": f"{final['train_seconds']:.0f} s",
    }
    epochs = [{key: _short(value) for key, value in record.items()} for record in history]
    sections: list[tuple[str, object]] = [("Epochs", epochs), ("Settings", config.model_dump())]
    if report is not None:
        sections.append(("Weight transfer", "\n".join(report.lines(limit=50))))
    images = [
        ("Learning curves", run_dir / "curves.png"),
        ("Confusion matrix (test)", Path(eval_files["confusion"])),
        ("Misclassified test images", Path(eval_files["misclassified"])),
    ]
    write_html_report(
        run_dir / "report.html",
        title=f"graft run {run_dir.name}",
        summary=summary,
        sections=sections,
        images=images,
    )
