"""`graft train`: data → model → epochs with progress → run directory → bundle."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from timm.utils import ModelEmaV3
from torch import nn

from graft._version import __version__
from graft.bundle import Bundle, check_replaceable
from graft.data.base import ImageSet, Splits
from graft.data.loader import count_batches
from graft.data.sources import load_splits, normalise_source, source_label
from graft.errors import GraftError, Interrupted
from graft.evaluate import EvalResult, evaluate_model, write_eval_outputs
from graft.io import atomic_write_json
from graft.models.factory import Architecture, build_model, count_parameters
from graft.models.weights import TransferReport
from graft.progress import console as default_console
from graft.spec import InputSpec
from graft.train import distributed
from graft.train.augment import make_augment
from graft.train.cache import cache_features, can_cache, head_on_features
from graft.train.checkpoint import checkpoint_path, load_checkpoint, remove_checkpoint, save_checkpoint
from graft.train.config import TrainConfig, make_config, validate
from graft.train.distributed import World, world_from_env
from graft.train.optim import make_optimizer, make_schedule
from graft.train.runtime import Runtime, resolve_runtime, wrap_for_training
from graft.train.signals import StopSignals
from graft.train.start import parent_record, resolve_settings, starting_model
from graft.train.steps import (
    EpochProgress,
    StepContext,
    drop_last,
    epoch_record,
    epoch_seed,
    feature_batches,
    image_batches,
    run_epoch,
)
from graft.train.strategy import backbone_frozen, backbone_lr_ratio, check_strategy, set_phase

EpochCallback = Callable[[dict, nn.Module, InputSpec], None]


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
    resume: str | Path | None = None,
    console: Console | None = None,
    on_epoch: EpochCallback | None = None,
    **overrides,
) -> TrainResult:
    """Fine-tune a timm model on a data source and write a bundle.

    `graft.train(data="mnist", model="resnet18", input_mode="fold", size=32, epochs=1)` is the simple call;
    every field of `TrainConfig` can be given here, in a TOML recipe, or both (keywords win).
    `graft.train(resume="runs/…")` continues an interrupted run from its last checkpoint with its own settings.
    Under `torchrun`, each process trains on its slice of every batch and only rank 0 writes files.
    `on_epoch(record, model, spec)` is called after each epoch with its metrics and the model being evaluated
    (benchmarks use it to follow test accuracy over time).
    """
    world = world_from_env()
    if resume is not None:
        if config is not None or recipe is not None:
            raise GraftError("resume continues a run with its own settings; give no recipe or config")
        run_dir = Path(resume)
        config = resumed_config(run_dir, overrides)
    else:
        config = config or make_config(recipe, **overrides)
        config = resolve_settings(config.model_copy(update={"data": normalise_source(config.data)}))
        run_dir = _run_dir(config)
    out = console or default_console()
    if not world.is_main:
        out = Console(quiet=True)
    runtime = resolve_runtime(config, world)
    distributed.start(world, runtime.device)
    try:
        return _train(config, run_dir, resume is not None, world, runtime, out, on_epoch)
    finally:
        distributed.stop(world)


def resumed_config(run_dir: Path, overrides: dict) -> TrainConfig:
    """RUN_DIR's own settings; only how the work is done (threads, workers, device) may change on resume."""
    path = run_dir / "config.json"
    if not path.is_file():
        raise GraftError(f"{run_dir} is not a graft run directory: config.json is missing")
    given = {key: value for key, value in overrides.items() if value is not None}
    changed = sorted(set(given) - RESUME_MAY_CHANGE)
    if changed:
        flags = ", ".join("--" + key.replace("_", "-") for key in changed)
        raise GraftError(f"--resume continues {run_dir} with its own settings; {flags} cannot change")
    settings = json.loads(path.read_text())
    settings.update(given)
    return validate(settings, origin=str(path))


RESUME_MAY_CHANGE = {"threads", "workers", "device"}


def _train(
    config: TrainConfig,
    run_dir: Path,
    resuming: bool,
    world: World,
    runtime: Runtime,
    out: Console,
    on_epoch: EpochCallback | None,
) -> TrainResult:
    bundle_dir = Path(config.output) if config.output else run_dir / "bundle"
    if resuming and (bundle_dir / "graft.json").is_file() and not checkpoint_path(run_dir).is_file():
        raise GraftError(f"{run_dir} has finished; its bundle is {bundle_dir}")
    if not resuming:
        _check_outputs(bundle_dir, run_dir, config.force)
    check_strategy(config)
    distributed.check_batch_size(world, config.batch_size)
    torch.set_num_threads(runtime.threads)
    _seed_everything(config.seed)

    splits, train_set = _load_data(config, out)
    classes = splits.classes
    checkpoint = load_checkpoint(run_dir) if resuming else None
    if checkpoint is not None:
        model, arch, spec, report = _model_from_checkpoint(checkpoint, run_dir)
    else:
        model, arch, spec, report = starting_model(config, classes, train_set)
    model.to(runtime.device)
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    out.print(
        f"graft train: {config.model} ({count_parameters(model) / 1e6:.2f} M parameters), mode {config.input_mode}, "
        f"{spec.size[0]}×{spec.size[1]}×{spec.channels}, {config.data}: {len(train_set)} train / "
        f"{len(splits.valid)} valid / {len(splits.test)} test, {len(classes)} classes; strategy {config.strategy}; "
        f"{runtime.describe()}" + (f"; {world.size} processes" if world.distributed else "")
    )
    if report is not None and checkpoint is None:
        for line in report.lines():
            out.print(line, markup=False, highlight=False)

    metrics_path = run_dir / "metrics.jsonl"
    if world.is_main and not resuming:
        _start_run_dir(run_dir, config, report)
    distributed.barrier(world)

    cached = can_cache(config, model, world)
    if cached:
        out.print("transfer without augmentation: the backbone runs once, the head trains on cached features")
        train_features = cache_features(model, spec, train_set, runtime, config, out)
        valid_features = cache_features(model, spec, splits.valid, runtime, config, out)
        head = head_on_features(model)
    steps = count_batches(len(train_set), config.batch_size, drop_last=drop_last(len(train_set), config))
    optimizer = make_optimizer(model, config)
    schedule = make_schedule(optimizer, config, steps)
    ema = ModelEmaV3(model, decay=config.ema, use_warmup=True) if config.ema else None
    stop = StopSignals()
    ctx = StepContext(
        model=head if cached else model,
        optimizer=optimizer,
        schedule=schedule,
        runtime=runtime,
        config=config,
        world=world,
        should_stop=lambda: distributed.broadcast_flag(stop.requested is not None, world, runtime.device),
        augment=make_augment(config),
        out=out,
    )
    if ema is not None:
        ctx.after_step = lambda: ema.update(model, step=schedule.last_epoch)

    history: list[dict] = []
    keep = config.keep or ("best" if config.patience is not None else "last")
    best: dict | None = None  # {"epoch", "valid_acc", "state"} of the best epoch so far (state only to keep it)
    first_epoch, position, done, elapsed_before = 1, EpochProgress(), False, 0.0
    if checkpoint is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
        schedule.load_state_dict(checkpoint["schedule"])
        if ema is not None:
            ema.module.load_state_dict(checkpoint["ema"])
        history = list(checkpoint["history"])
        best = checkpoint["best"]
        first_epoch = checkpoint["epoch"]
        position = EpochProgress(**checkpoint["position"])
        done = checkpoint["done"]
        elapsed_before = checkpoint["elapsed"]
        if checkpoint.get("fell_back"):
            ctx.runtime = dataclasses.replace(ctx.runtime, bf16=False, fell_back=checkpoint["fell_back"])
        out.print(f"resuming {run_dir} at epoch {min(first_epoch, config.epochs)}, batch {position.step}/{steps}")
    if world.is_main:
        metrics_path.write_text("".join(json.dumps(record) + "\n" for record in history))

    def evaluate(images: ImageSet) -> EvalResult:
        return evaluate_model(
            ema.module if ema is not None else model,
            spec,
            images,
            classes=classes,
            batch_size=config.batch_size,
            workers=config.workers,
            console=out,
            device=runtime.device,  # float32: validation numbers are what the bundle will do
            channels_last=runtime.channels_last,
        )

    def save(epoch: int, state: EpochProgress, finished: bool = False) -> None:
        if not world.is_main:
            return
        save_checkpoint(
            run_dir,
            {
                "architecture": arch.to_dict(),
                "spec": spec.to_dict(),
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(),
                "ema": ema.module.state_dict() if ema is not None else None,
                "history": history,
                "best": best,
                "epoch": epoch,
                "position": state.to_dict(),
                "rng": torch.get_rng_state(),
                "fell_back": ctx.runtime.fell_back,
                "elapsed": elapsed_before + time.perf_counter() - started,  # seconds over all sessions
                "done": finished,  # training over (last epoch or early stop): a resume goes to the bundle
            },
        )

    started = time.perf_counter()
    wrapped: dict[bool, nn.Module] = {}
    with stop.installed():
        for epoch in range(first_epoch, 1 if done else config.epochs + 1):
            if epoch > first_epoch or position.step == 0:
                position = EpochProgress()
                torch.manual_seed(epoch_seed(config, epoch))  # dropout and augmentation draws, per epoch
            else:
                torch.set_rng_state(checkpoint["rng"])
            frozen = backbone_frozen(config, epoch)
            set_phase(model, frozen)
            if config.strategy == "freeze-unfreeze" and epoch == config.head_epochs + 1 and position.step == 0:
                out.print(f"epoch {epoch}: backbone unfrozen (learning rate × {backbone_lr_ratio(config):g})")
            if frozen not in wrapped:  # DDP tracks the parameters that train: one wrapper per phase
                wrapped.clear()
                wrapped[frozen] = head if cached else wrap_for_training(model, world, runtime, config)
            ctx.model = wrapped[frozen]
            if cached:
                batches = feature_batches(train_features, train_set.labels, ctx, epoch, position.step)
            else:
                batches = image_batches(train_set, spec, ctx, epoch, position.step)
            position, interrupted = run_epoch(ctx, epoch, steps, position, out, batches)
            if interrupted:
                save(epoch, position)
                distributed.barrier(world)
                raise Interrupted(
                    f"stopped at epoch {epoch}, batch {position.step}/{steps}; continue with "
                    f"`graft train --resume {run_dir}`",
                    signum=stop.requested,
                )
            head_lr = max(group["lr"] for group in optimizer.param_groups if group["role"] == "head")
            record = epoch_record(position, epoch, head_lr, ctx)
            if cached:
                valid = _evaluate_features(head, valid_features, splits.valid, classes, ctx.runtime)
            else:
                valid = evaluate_sharded(evaluate, splits.valid, world, runtime)
            record.update(valid_loss=valid.loss, valid_acc=valid.accuracy)
            history.append(record)
            if best is None or record["valid_acc"] > best["valid_acc"]:
                state = _weights_to_keep(model, ema) if keep == "best" else None
                best = {"epoch": epoch, "valid_acc": record["valid_acc"], "state": state}
            if world.is_main:
                with metrics_path.open("a") as handle:
                    handle.write(json.dumps(record) + "\n")
                _plot_curves(history, run_dir, config)
            out.print(
                f"epoch {epoch}/{config.epochs}  loss {record['train_loss']:.4f}  acc {record['train_acc']:.2%}  "
                f"valid loss {valid.loss:.4f}  valid acc {valid.accuracy:.2%}  "
                f"{record['images_per_s']:.0f} img/s  {record['seconds']:.0f}s"
            )
            if on_epoch is not None:
                on_epoch(record, ema.module if ema is not None else model, spec)
            stopped_early = config.patience is not None and epoch - best["epoch"] >= config.patience
            save(epoch + 1, EpochProgress(), finished=stopped_early or epoch == config.epochs)
            if stopped_early:
                out.print(
                    f"early stop: valid accuracy has not improved for {config.patience} epochs "
                    f"(best {best['valid_acc']:.2%} at epoch {best['epoch']})"
                )
                break

    final_model = ema.module if ema is not None else model
    if keep == "best" and best is not None:
        final_model.load_state_dict(best["state"])
        out.print(f"bundle weights: epoch {best['epoch']} (best valid accuracy {best['valid_acc']:.2%})")
    final_model = final_model.float().to(memory_format=torch.contiguous_format).eval()
    distributed.barrier(world)
    if not world.is_main:
        return TrainResult(None, run_dir, history)  # type: ignore[arg-type]
    # float32, as the bundle will predict offline and when served
    test = evaluate_model(
        final_model,
        spec,
        splits.test,
        classes=classes,
        batch_size=config.batch_size,
        workers=config.workers,
        console=out,
        device=runtime.device,
    )
    final_model.to("cpu")
    out.print(f"test: loss {test.loss:.4f}  accuracy {test.accuracy:.2%} on {len(splits.test)} images")
    final = _final_metrics(history, test, elapsed_before + time.perf_counter() - started, best, keep)
    provenance = _provenance(config, splits, train_set, report, run_dir, ctx.runtime, world)
    bundle = Bundle(final_model, arch, spec, list(classes), final, provenance)
    bundle.save(bundle_dir, overwrite=config.force or resuming)
    remove_checkpoint(run_dir)
    eval_files = write_eval_outputs(test, splits.test, run_dir, title=f"{config.data} test")
    _write_report(run_dir, config, final, history, report, eval_files, bundle_dir)
    out.print(f"bundle: {bundle_dir}   run: {run_dir} (report.html, curves.png, metrics.jsonl)")
    return TrainResult(bundle, run_dir, history)


def _model_from_checkpoint(
    checkpoint: dict, run_dir: Path
) -> tuple[nn.Module, Architecture, InputSpec, TransferReport | None]:
    """The model as it was at the checkpoint (rebuilt from its records: the --weights file may be gone)."""
    arch = Architecture.from_dict(checkpoint["architecture"])
    spec = InputSpec.from_dict(checkpoint["spec"])
    model = build_model(arch, spec)
    model.load_state_dict(checkpoint["model"])
    return model, arch, spec, _saved_report(run_dir)


def _start_run_dir(run_dir: Path, config: TrainConfig, report: TransferReport | None) -> None:
    """A fresh run's directory: its settings (what --resume reads) and its weight report; no earlier state."""
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_checkpoint(run_dir)  # a --force re-run must never resume into the previous run's state
    atomic_write_json(run_dir / "config.json", config.model_dump())
    if report is not None:
        atomic_write_json(run_dir / "transfer.json", report.to_dict())
    else:
        (run_dir / "transfer.json").unlink(missing_ok=True)  # a --force re-run must not keep an old report


def _weights_to_keep(model: nn.Module, ema: ModelEmaV3 | None) -> dict[str, torch.Tensor]:
    source = ema.module if ema is not None else model
    return {name: tensor.detach().to("cpu", copy=True) for name, tensor in source.state_dict().items()}


def _saved_report(run_dir: Path) -> TransferReport | None:
    path = run_dir / "transfer.json"
    return TransferReport(**json.loads(path.read_text())) if path.is_file() else None


def _evaluate_features(
    head: nn.Module, features: torch.Tensor, images: ImageSet, classes: list[str], runtime: Runtime
) -> EvalResult:
    """Valid metrics from cached features (the same numbers the full model gives, without the backbone pass)."""
    head.eval()
    with torch.no_grad():
        logits = head(features.to(runtime.device)).float().cpu()
    labels = torch.from_numpy(images.labels)
    top, index = logits.softmax(dim=1).max(dim=1)
    return EvalResult(
        classes=list(classes),
        labels=images.labels,
        predicted=index.numpy(),
        confidence=top.numpy(),
        loss=float(F.cross_entropy(logits, labels)),
    )


def evaluate_sharded(
    evaluate: Callable[[ImageSet], EvalResult], images: ImageSet, world: World, runtime: Runtime
) -> EvalResult:
    """Each process evaluates its share; loss and accuracy are reduced so every process sees the same numbers."""
    if not world.distributed:
        return evaluate(images)
    share = images.subset(np.arange(world.rank, len(images), world.size))
    result = evaluate(share)
    n = len(share)
    loss_sum, correct, total = distributed.reduce_sums(
        [result.loss * n, float((result.predicted == result.labels).sum()), n], world, runtime.device
    )
    return ReducedResult(loss=loss_sum / max(total, 1), accuracy=correct / max(total, 1))


@dataclass
class ReducedResult:
    loss: float
    accuracy: float


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


def _final_metrics(history: list[dict], test: EvalResult, seconds: float, best: dict | None, keep: str) -> dict:
    """Metrics of the epoch whose weights the bundle holds, the test result, and how long training took."""
    chosen = next(h for h in history if h["epoch"] == best["epoch"]) if keep == "best" and best else history[-1]
    return {
        "epoch": chosen["epoch"],
        "train_loss": chosen["train_loss"],
        "train_acc": chosen["train_acc"],
        "valid_loss": chosen["valid_loss"],
        "valid_acc": chosen["valid_acc"],
        "test_loss": test.loss,
        "test_acc": test.accuracy,
        "train_images_per_s": float(np.mean([h["images_per_s"] for h in history])),
        "train_seconds": seconds,
    }


def _provenance(
    config: TrainConfig,
    splits: Splits,
    train_set: ImageSet,
    report: TransferReport | None,
    run_dir: Path,
    runtime: Runtime,
    world: World,
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
        "training": config.model_dump(exclude={"output", "run_dir", "force", "threads", "workers", "device"}),
        "epochs": config.epochs,
        "seed": config.seed,
        "transfer": report.to_dict() if report is not None else None,
        "run_dir": str(run_dir),
        "runtime": {"how": runtime.describe(), "processes": world.size, "torch": torch.__version__},
        "continued_from": parent_record(config),
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
