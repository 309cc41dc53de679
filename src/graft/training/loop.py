"""`graft train`: data → model → epochs with progress → run directory → bundle."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from torch import nn

from graft._version import __version__
from graft.bundle import Bundle, check_replaceable
from graft.data.base import ImageSet, Splits
from graft.data.memory import InMemory
from graft.data.sources import load_splits, normalise_source, source_label
from graft.data.split import stratified_sample
from graft.errors import GraftError, Interrupted
from graft.evaluation import EvalResult, calibrate_confidence, confidence_sample, evaluate_model, write_eval_outputs
from graft.io import atomic_write_json, json_text
from graft.models.factory import build_model, count_parameters
from graft.models.hub import require_hub_weights
from graft.models.weights import TransferReport
from graft.record import META_FILE, Architecture, ConfidenceRecord, DataRecord, Provenance, TransferRecord
from graft.record import read as read_record
from graft.spec import InputSpec
from graft.training import distributed
from graft.training.batchnorm import BatchNormCheck, recalibrate_if_stale
from graft.training.checkpoint import checkpoint_path, load_checkpoint, remove_checkpoint
from graft.training.config import TrainConfig, make_config, validate
from graft.training.distributed import World
from graft.training.gap import valid_test_warning
from graft.training.runtime import Runtime
from graft.training.session import EpochCallback, Session, start_session
from graft.training.start import Origin, starting_model, weights_origin
from graft.training.strategy import check_strategy


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


def run_settings(
    config: TrainConfig | None, recipe: str | Path | None, resume: str | Path | None, overrides: dict
) -> tuple[Origin, Path | None]:
    """A run's settings and where its weights start (`Origin`, which holds the settings with every open one filled
    in), and its directory when it is resumed (a fresh run's is named by `_run_dir`)."""
    if resume is not None:
        if config is not None or recipe is not None:
            raise GraftError("resume continues a run with its own settings; give no recipe or config")
        run_dir = Path(resume)
        return weights_origin(resumed_config(run_dir, overrides)), run_dir
    config = config or make_config(recipe, **overrides)
    return weights_origin(config.model_copy(update={"data": normalise_source(config.data)})), None


def resumed_config(run_dir: Path, overrides: dict) -> TrainConfig:
    """RUN_DIR's own settings; only how the work is done (threads, workers, device) may change on resume."""
    path = run_dir / "config.json"
    if not path.is_file():
        raise GraftError(f"{run_dir} is not a graft run directory: config.json is missing")
    given = {key: value for key, value in overrides.items() if value is not None}
    changed = sorted(set(given) - RESUME_MAY_CHANGE - {"force"})
    if changed:
        flags = ", ".join("--" + key.replace("_", "-") for key in changed)
        raise GraftError(f"--resume continues {run_dir} with its own settings; {flags} cannot change")
    settings = json.loads(path.read_text())
    # The first start's --force replaced what was there then; replacing a bundle made since needs a new --force.
    settings["force"] = False
    settings.setdefault("group_by", "none")  # runs started before --group-by split image by image: keep their split
    settings.update(given)
    return validate(settings, origin=str(path))


RESUME_MAY_CHANGE = {"threads", "workers", "device"}


def _train(
    origin: Origin,
    run_dir: Path,
    resuming: bool,
    world: World,
    runtime: Runtime,
    out: Console,
    on_epoch: EpochCallback | None,
    memory: InMemory | None = None,
    on_session: Callable[[Session], None] | None = None,
) -> TrainResult:
    """One run, fresh or resumed: data (a source's, or `memory`'s splits), model, epochs, bundle.

    `on_epoch` may end the run after an epoch by returning True; `on_session` sees the session before epoch one.
    """
    config = origin.config
    bundle_dir = Path(config.output) if config.output else run_dir / "bundle"
    if resuming and (bundle_dir / META_FILE).is_file() and not checkpoint_path(run_dir).is_file():
        raise GraftError(f"{run_dir} has finished; its bundle is {bundle_dir}")
    if not resuming:
        _check_outputs(bundle_dir, run_dir, config.force)
    else:
        _check_resumed_output(bundle_dir, run_dir, config.force)
    check_strategy(config)
    distributed.check_batch_size(world, config.batch_size)
    torch.set_num_threads(runtime.threads)
    _seed_everything(config.seed)
    if origin.kind == "hub" and not resuming:
        require_hub_weights(config.model, offline=not config.download)  # before minutes of data loading

    splits, train_set = _load_data(config, out, memory.splits if memory is not None else None)
    checkpoint = load_checkpoint(run_dir) if resuming else None
    if checkpoint is not None:
        model, arch, spec, report = _model_from_checkpoint(checkpoint, run_dir)
    else:
        model, arch, spec, report = starting_model(origin, splits.classes, train_set)
    model.to(runtime.device)
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    out.print(
        f"graft train: {config.model} ({count_parameters(model) / 1e6:.2f} M parameters), mode {config.input_mode}, "
        f"{spec.size[0]}×{spec.size[1]}×{spec.channels}, {config.data}: {len(train_set)} train / "
        f"{len(splits.valid)} valid / {len(splits.test)} test, {len(splits.classes)} classes; "
        f"strategy {config.strategy}; {runtime.describe()}" + (f"; {world.size} processes" if world.distributed else "")
    )
    if report is not None and checkpoint is None:
        for line in report.lines():
            out.print(line, markup=False, highlight=False)
    if world.is_main and not resuming:
        _start_run_dir(run_dir, config, report)
    distributed.barrier(world)

    session = start_session(
        config, run_dir, world, runtime, out,
        splits=splits, train_set=train_set, model=model, arch=arch, spec=spec, report=report,
    )  # fmt: skip
    if checkpoint is not None:
        session.restore(checkpoint)
    if world.is_main:
        session.metrics_path.write_text("".join(json_text(record, indent=None) + "\n" for record in session.history))
    if on_session is not None:
        on_session(session)
    session.started = time.perf_counter()
    with session.stop.installed():
        for epoch in range(session.first_epoch, 1 if session.done else config.epochs + 1):
            if session.train_epoch(epoch, on_epoch):
                break

        final_model = session.final_model()
        distributed.barrier(world)
        if not world.is_main:
            return TrainResult(None, run_dir, session.history)  # type: ignore[arg-type]
        try:  # testing, BatchNorm check and calibration stop on Ctrl-C too; the last checkpoint stays
            return _finish(session, final_model, bundle_dir, resuming, origin, memory)
        except Interrupted as error:
            raise Interrupted(
                f"{error}; training is done and checkpointed: `graft train --resume {run_dir}` finishes the run",
                signum=session.stop.requested,
            ) from None


def _finish(
    session: Session,
    final_model: nn.Module,
    bundle_dir: Path,
    resuming: bool,
    origin: Origin,
    memory: InMemory | None = None,
) -> TrainResult:
    """Test the kept weights in float32 (as the bundle will predict offline and when served), write the bundle,
    drop the checkpoint, and write the run's evaluation files and report. In-memory data without a test set
    gets no test numbers (None), never a stand-in."""
    config, run_dir, out, splits = session.config, session.run_dir, session.out, session.splits
    batchnorm = _check_batchnorm(session, final_model)
    test = None
    if len(splits.test):
        test = evaluate_model(
            final_model,
            session.spec,
            splits.test,
            classes=splits.classes,
            batch_size=config.batch_size,
            workers=config.workers,
            console=out,
            device=session.ctx.runtime.device,
            should_stop=_stop_asked(session),
        )
    confidence = _calibrate(session, final_model)
    final_model.to("cpu")
    if test is not None:
        out.print(f"test: loss {test.loss:.4f}  accuracy {test.accuracy:.2%} on {len(splits.test)} images")
    else:
        out.print("test: no test set was given (test=(x, y)), so the bundle records no test accuracy")
    final = _final_metrics(session.history, test, session.elapsed(), session.best, session.keep)
    if batchnorm is not None:
        final.update(batchnorm.metrics())
        if batchnorm.kept:
            final.update(valid_acc=batchnorm.valid_after, valid_loss=batchnorm.valid_loss_after)
    warning = None
    if test is not None:
        units = [_units(images) for images in (splits.valid, splits.test)]
        warning = valid_test_warning(final["valid_acc"], test.accuracy, config.group_by, *units)
    if warning is not None:
        out.print(warning, style="bold red", markup=False, highlight=False)
        final["warnings"] = [warning]
    provenance = _provenance(
        config, splits, session.train_set, session.report, run_dir, session.ctx.runtime, session.world, origin
    )
    if memory is not None:  # no source to reload: say what the data was instead
        recorded = json.loads(json.dumps(memory.record))
        data = {**provenance.data.model_dump(mode="json"), "source": None, "data_root": None, "in_memory": recorded}
        provenance = provenance.updated(data=DataRecord.model_validate(data))
    bundle = Bundle(
        final_model, session.arch, session.spec, list(splits.classes), final, provenance, confidence=confidence
    )
    if resuming:  # again: another bundle may have appeared there while this run trained (its checkpoint stays)
        _check_resumed_output(bundle_dir, run_dir, config.force)
    bundle.save(bundle_dir, overwrite=config.force or resuming)
    remove_checkpoint(run_dir)
    eval_files = write_eval_outputs(test, splits.test, run_dir, title=f"{config.data} test") if test else {}
    _write_report(run_dir, config, final, session.history, session.report, eval_files, bundle_dir)
    out.print(f"bundle: {bundle_dir}   run: {run_dir} (report.html, curves.png, metrics.jsonl)")
    return TrainResult(bundle, run_dir, session.history)


def _units(images: ImageSet) -> int:
    """Independent samples in a split: its groups (a video's frames count once), else its images."""
    groups = images.groups()
    return len(images) if groups is None else len(set(groups))


def _stop_asked(session: Session) -> Callable[[], bool]:
    return lambda: session.stop.requested is not None


def _check_batchnorm(session: Session, model: nn.Module) -> BatchNormCheck | None:
    """Stale BatchNorm statistics (short runs): checked, and recalibrated when validation says it helps
    (graft.training.batchnorm). Not under `transfer`, whose backbone keeps its statistics by design."""
    config = session.config
    if not config.recalibrate_bn or config.strategy == "transfer":
        return None
    device = session.ctx.runtime.device

    def evaluate(candidate: nn.Module) -> EvalResult:
        return evaluate_model(
            candidate, session.spec, session.splits.valid, classes=session.splits.classes,
            batch_size=config.batch_size, workers=config.workers, console=session.out, device=device,
            should_stop=_stop_asked(session),
        )  # fmt: skip

    check = recalibrate_if_stale(
        model.to(device), session.spec, session.train_set, session.splits.valid,
        batch_size=config.batch_size, workers=config.workers, device=device, evaluate=evaluate,
    )  # fmt: skip
    if check is not None:
        session.out.print(check.line(), markup=False, highlight=False)
    return check


def _calibrate(session: Session, final_model: nn.Module) -> ConfidenceRecord | None:
    """The bundle's "not sure" threshold, from the kept weights' predictions on (a sample of) validation."""
    config, splits = session.config, session.splits
    if not len(splits.valid):
        return None
    valid = evaluate_model(
        final_model,
        session.spec,
        confidence_sample(splits.valid, config.seed),
        classes=splits.classes,
        batch_size=config.batch_size,
        workers=config.workers,
        console=session.out,
        device=session.ctx.runtime.device,
        should_stop=_stop_asked(session),
    )
    confidence = calibrate_confidence(valid)
    if confidence.source == "validation" and confidence.threshold > 1:
        session.out.print(
            f"confidence: never 'sure' (no confidence level was right {confidence.target_accuracy:.0%} of the time on "
            f"{confidence.images} validation images): every answer is shown as 'not sure'"
        )
    elif confidence.source == "validation":
        session.out.print(
            f"confidence: below {confidence.threshold:.1%} the top class is 'not sure' (at or above it: "
            f"{confidence.answered:.0%} of {confidence.images} validation images, "
            f"right {confidence.answered_accuracy or 0:.1%})"
        )
    return confidence


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


def _saved_report(run_dir: Path) -> TransferReport | None:
    path = run_dir / "transfer.json"
    return TransferReport(**json.loads(path.read_text())) if path.is_file() else None


def _check_resumed_output(bundle_dir: Path, run_dir: Path, force: bool) -> None:
    """A resumed run replaces only its own bundle (one it wrote before a crash); any other needs --force."""
    if force or not bundle_dir.exists() or (bundle_dir.is_dir() and not any(bundle_dir.iterdir())):
        return
    try:
        written_by = read_record(bundle_dir).provenance.run_dir
    except GraftError:
        written_by = None
    if written_by is None or Path(written_by).resolve() != run_dir.resolve():
        raise GraftError(
            f"{bundle_dir} holds a bundle this run did not write; resume with --force to replace it, "
            "or move it away first"
        )


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


def _load_data(config: TrainConfig, out: Console, given: Splits | None = None) -> tuple[Splits, ImageSet]:
    """The splits (the source's, or those `given`), and the training set actually used (`max_train` takes a seeded
    sample). Only given splits may lack a test set."""
    splits = given or load_splits(
        config.data,
        config.data_root,
        valid_fraction=config.valid_fraction,
        seed=config.seed,
        download=config.download,
        report=lambda line: out.print(line, style="yellow", markup=False),
        group_by=config.group_by,
    )
    train_set = splits.train
    if config.max_train and config.max_train < len(train_set):
        keep = np.sort(np.random.default_rng(config.seed).permutation(len(train_set))[: config.max_train])
        train_set = train_set.subset(keep)
    splits = Splits(
        train=splits.train,
        valid=_at_most(splits.valid, config.max_valid, config.seed),
        test=_at_most(splits.test, config.max_test, config.seed),
    )
    if len(train_set) < 2:
        raise GraftError(f"{config.data}: {len(train_set)} training image(s) after the split; need at least 2")
    for name, part in (("valid", splits.valid), ("test", splits.test)):
        if len(part) == 0 and (name == "valid" or given is None):
            raise GraftError(f"{config.data}: the {name} split is empty; use more images or another --valid-fraction")
    return splits, train_set


def _at_most(images: ImageSet, limit: int | None, seed: int) -> ImageSet:
    """A seeded, stratified sample of `limit` images (`--max-valid`, `--max-test`), or all of them."""
    if limit is None or limit >= len(images):
        return images
    return images.subset(stratified_sample(images.labels, limit, seed))


def _final_metrics(history: list[dict], test: EvalResult | None, seconds: float, best: dict | None, keep: str) -> dict:
    """Metrics of the epoch whose weights the bundle holds, the test result (None without a test set), and how
    long training took."""
    chosen = next(h for h in history if h["epoch"] == best["epoch"]) if keep == "best" and best else history[-1]
    return {
        "epoch": chosen["epoch"],
        "train_loss": chosen["train_loss"],
        "train_acc": chosen["train_acc"],
        "valid_loss": chosen["valid_loss"],
        "valid_acc": chosen["valid_acc"],
        "test_loss": test.loss if test is not None else None,
        "test_acc": test.accuracy if test is not None else None,
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
    origin: Origin,
) -> Provenance:
    """Where a bundle came from: enough to rebuild its splits (`graft eval`) and to repeat its training."""
    return Provenance(
        graft_version=__version__,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        data=DataRecord(
            source=config.data,
            data_root=config.data_root,
            classes=len(splits.classes),
            train=len(train_set),
            valid=len(splits.valid),
            test=len(splits.test),
            valid_fraction=config.valid_fraction,
            split_seed=config.seed,
            group_by=config.group_by,
        ),
        training=json.loads(
            json.dumps(config.model_dump(exclude={"output", "run_dir", "force", "threads", "workers", "device"}))
        ),
        epochs=config.epochs,
        seed=config.seed,
        transfer=TransferRecord(**report.to_dict()) if report is not None else None,
        run_dir=str(Path(run_dir).resolve()),  # absolute: a resume from anywhere recognises its own bundle
        runtime={"how": runtime.describe(), "processes": world.size, "torch": torch.__version__},
        continued_from=origin.parent(),
    )


def _batchnorm_summary(final: dict) -> str:
    """What the BatchNorm check did, for the report."""
    found = f"eval mode {final['bn_check_eval_acc']:.1%} vs batch statistics {final['bn_check_batch_stats_acc']:.1%}"
    if "valid_acc_before_recalibration" not in final:
        return f"{found}: unchanged"
    before = final["valid_acc_before_recalibration"]
    if final["bn_recalibrated"]:
        return f"{found}: recalibrated on training images (valid {before:.2%} → {final['valid_acc']:.2%})"
    return f"{found}: recalibration tried, not kept (it did not improve valid {before:.2%})"


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
        "test accuracy": f"{final['test_acc']:.2%}" if final["test_acc"] is not None else "no test set",
        "valid accuracy": f"{final['valid_acc']:.2%}",
        **({"WARNING": final["warnings"][0].removeprefix("WARNING: ")} if final.get("warnings") else {}),
        **({"BatchNorm statistics": _batchnorm_summary(final)} if "bn_recalibrated" in final else {}),
        "train images/s": f"{final['train_images_per_s']:.0f}",
        "time": f"{final['train_seconds']:.0f} s",
    }
    epochs = [{key: _short(value) for key, value in record.items()} for record in history]
    sections: list[tuple[str, object]] = [("Epochs", epochs), ("Settings", config.model_dump())]
    if report is not None:
        sections.append(("Weight transfer", "\n".join(report.lines(limit=50))))
    images = [("Learning curves", run_dir / "curves.png")]
    if eval_files:
        images += [
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
