"""Training settings: one validated model for defaults, TOML recipes and command-line flags.

Precedence: built-in defaults < recipe file < flags. Unknown keys and wrong types are refused with the key named.
"""

from __future__ import annotations

import difflib
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from graft.data.groups import check_group_by
from graft.errors import GraftError
from graft.spec import InputMode


class TrainConfig(BaseModel):
    """Everything `graft train` needs; every field can come from a recipe or a flag of the same name.

    Each description is the flag's help text (graft.cli.options builds `graft train`'s options from these fields,
    with `FLAGS` below); the default the help shows is the field's own, so neither is typed twice.
    """

    # defer_build: the validator is built on first use, not on import (`graft --help` only reads the fields).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False, defer_build=True)

    data: str = Field("digits", description="Data source: mnist, fashion-mnist, kmnist, digits or folder:PATH.")
    data_root: str | None = Field(None, description="Where data sets are looked for.")
    download: bool = Field(True, description="Download missing MNIST-style files (the --offline flag turns it off).")
    model: str | None = Field(None, description="Any timm model name.")
    model_kwargs: dict[str, Any] | None = Field(
        None, description="timm kwargs for the model (default: the --weights bundle's when it is that model)."
    )
    pretrained: Literal["imagenet"] | None = Field(
        None, description="'imagenet': fetch timm hub weights (needs internet)."
    )
    weights: str | None = Field(
        None, description="Local weights: .safetensors, a PyTorch state dict, or a bundle to continue training from."
    )
    # None = the default below, or what the --weights bundle was built with.
    input_mode: InputMode | None = Field(
        None, description="How gray data meets an RGB network: replicate, stem or fold."
    )
    head: Literal["pool", "flatten"] | None = Field(
        None, description="pool (global pooling) or flatten (as the Keras reference)."
    )
    size: int | None = Field(None, ge=8, le=1024, description="Square input size in pixels.")
    resize: Literal["stretch", "crop"] | None = Field(None, description="stretch to the square, or crop the centre.")
    strategy: Literal["finetune", "transfer", "freeze-unfreeze"] = Field(
        "finetune",
        description="finetune (all layers train), transfer (frozen backbone with BatchNorm in inference mode: only the "
        "head and a stem train) or freeze-unfreeze (the head for --head-epochs, then all layers).",
    )
    head_epochs: int = Field(1, ge=1, description="freeze-unfreeze: epochs with the backbone frozen.")
    backbone_lr_ratio: float | None = Field(None, gt=0, le=1, description="Backbone LR = lr × this.")
    epochs: int = Field(5, ge=1, description="Passes over the training data.")
    batch_size: int = Field(
        64, ge=2, description="Images per step; at least 2, as BatchNorm needs two images to normalise."
    )
    optimizer: Literal["adamw", "adam", "sgd"] = Field("adamw", description="adamw, adam or sgd (with --momentum).")
    lr: float = Field(4e-3, gt=0, description="Peak learning rate.")
    weight_decay: float = Field(0.05, ge=0, description="Weight decay (biases and norm layers get none).")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum, Nesterov when > 0.")
    schedule: Literal["onecycle", "cosine", "constant"] = Field(
        "onecycle", description="onecycle, cosine or constant (after warmup)."
    )
    warmup_epochs: float = Field(0.3, ge=0, le=1000, description="Epochs of learning-rate warmup (a fraction is fine).")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Label smoothing of the cross-entropy loss.")
    augment: Literal["none", "reference"] = Field(
        "none", description="none, or reference: random rotation, zoom and shift per image, as in the Keras reference."
    )
    augment_engine: Literal["per-image", "batch"] = Field(
        "per-image",
        description="How augmentation runs: per-image (torchvision's RandomAffine, image by image) or batch (the "
        "same distribution in one affine_grid/grid_sample over the whole batch: many times faster on small images).",
    )
    rotate: float = Field(12.0, ge=0, le=180, description="Augmentation: largest rotation in degrees.")
    zoom: float = Field(0.1, ge=0, lt=1, description="Augmentation: scale drawn from [1-zoom, 1+zoom].")
    shift: float = Field(0.1, ge=0, lt=1, description="Augmentation: largest shift, as a fraction of the size.")
    ema: float | None = Field(
        None, gt=0, lt=1, description="Keep an EMA (moving average) of the weights with this decay (e.g. 0.999)."
    )
    patience: int | None = Field(
        None, ge=1, description="Early stopping: stop after this many epochs without a better valid accuracy."
    )
    keep: Literal["last", "best"] | None = Field(
        None, description="Bundle weights: last (the final epoch's) or best (valid accuracy)."
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto (bf16 autocast where the processor supports it, else fp32), fp32 or bf16."
    )
    # Off by default: measured by bench/train_speed.py, it helps some models and not others (docs/training.md).
    channels_last: bool = Field(False, description="Channels-last memory layout.")
    compile: bool = Field(False, description="torch.compile the model (measure first: it does not always win).")
    feature_cache: bool = Field(
        True, description="transfer without augmentation: compute backbone features once, train the head on them."
    )
    device: str | None = Field(None, description="cpu, cuda or cuda:N.")
    valid_fraction: float = Field(0.2, gt=0, lt=1, description="Share of the training data held out for validation.")
    group_by: str = Field(
        "auto",
        description="Images that belong together stay on one side of a split: auto (frames of one video, as "
        "`graft data frames` names them), folder (the sub-folder inside each class folder), regex:PATTERN (its match "
        "in the path inside the class folder) or none.",
    )
    seed: int = Field(0, ge=0, lt=2**32, description="Seeds the split, initialisation and batch order.")
    threads: int | None = Field(None, ge=1, description="CPU threads.")
    workers: int = Field(2, ge=0, description="Decoding processes for folder data.")
    max_train: int | None = Field(None, ge=1, description="Use only this many training images (quick trials).")
    max_valid: int | None = Field(None, ge=1, description="Validate on at most this many images (a seeded sample).")
    max_test: int | None = Field(None, ge=1, description="Test on at most this many images (a seeded sample).")
    recalibrate_bn: bool = Field(
        True,
        description="After training, re-estimate BatchNorm statistics on training images when eval-mode accuracy lags "
        "batch-statistics accuracy; kept only if validation accuracy improves.",
    )
    output: str | None = Field(None, description="Bundle directory.")
    run_dir: str | None = Field(None, description="Run directory for metrics, curves and report.")
    force: bool = Field(False, description="Replace an existing output bundle and run directory.")

    @field_validator("model")
    @classmethod
    def _non_empty(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("model_kwargs")
    @classmethod
    def _allowed_kwargs(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        from graft.record import check_timm_kwargs  # here: `graft --help` builds this model without the record

        return None if value is None else check_timm_kwargs(value)  # the rule a bundle's record is held to

    @field_validator("group_by")
    @classmethod
    def _group_rule(cls, value: str) -> str:
        return check_group_by(value)


ARCHITECTURE_DEFAULTS = {
    "model": "resnet18",
    "input_mode": "replicate",
    "head": "pool",
    "size": 32,
    "resize": "stretch",
}


@dataclass(frozen=True)
class Flag:
    """What a field's command-line flag needs beyond its name (`input_mode` → --input-mode), type and description."""

    short: str | None = None  # e.g. "-m"
    # The default the help shows where the field's None means "decided later"; "{default}" is replaced by the
    # field's default, or by ARCHITECTURE_DEFAULTS' for the architecture fields.
    default: str | None = None
    negatable: bool = False  # a switch that also has --no-NAME (to turn off what a recipe turned on)


# How the fields appear as flags (graft.cli.options builds them): a field not named here is --NAME with its default.
FLAGS: dict[str, Flag] = {
    "data": Flag(short="-d"),
    "data_root": Flag(default="$GRAFT_DATA or the user cache"),
    "model": Flag(short="-m", default="{default}, or the --weights bundle's model"),
    "size": Flag(short="-s"),
    "backbone_lr_ratio": Flag(default="0.1 under freeze-unfreeze, else 1"),
    "epochs": Flag(short="-e"),
    "batch_size": Flag(short="-b"),
    "keep": Flag(default="best with --patience, else last"),
    "channels_last": Flag(negatable=True),
    "feature_cache": Flag(negatable=True),
    "recalibrate_bn": Flag(negatable=True),
    "max_valid": Flag(default="all"),
    "max_test": Flag(default="all"),
    "device": Flag(default="cuda when available"),
    "threads": Flag(default="all cores, or $OMP_NUM_THREADS"),
    "output": Flag(short="-o", default="RUN_DIR/bundle"),
    "run_dir": Flag(default="runs/<data>-<model>-<mode>-<time>"),
}
# Fields that are not flags: --offline sets `download`; `model_kwargs` comes from a recipe or the --weights bundle.
NOT_FLAGS = frozenset({"download", "model_kwargs"})


def _all_errors(error: ValidationError, origin: str) -> GraftError:
    """Every problem of a recipe in one line (fix them all at once), an unknown key with its likely meaning."""
    known = list(TrainConfig.model_fields)
    problems, unmatched = [], False
    for problem in error.errors():
        key = ".".join(str(p) for p in problem["loc"]) or "recipe"
        if problem["type"] == "extra_forbidden":
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            unmatched |= not close
            problems.append(f"unknown key {key!r}" + (f" (did you mean {close[0]}?)" if close else ""))
        else:
            problems.append(f"{key}: {problem['msg']} (got {problem.get('input')!r})")
    listing = f" (known keys: {', '.join(known)})" if unmatched else ""
    return GraftError(f"{origin}: {'; '.join(problems)}{listing}")


def read_recipe(path: str | Path) -> dict:
    """The settings of a TOML recipe, flat or under a [train] table; keys may use - or _."""
    path = Path(path)
    if not path.is_file():
        raise GraftError(f"recipe not found: {path}")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise GraftError(f"{path} is not valid TOML: {error}") from None
    if isinstance(data.get("train"), dict):
        others = [key for key in data if key != "train"]
        if others:
            raise GraftError(f"{path}: with a [train] table, put every setting in it (found {', '.join(others)})")
        data = data["train"]
    settings = {key.replace("-", "_"): value for key, value in data.items()}
    if isinstance(settings.get("offline"), bool):  # the flag's name, as the README promises recipe keys = flags
        settings["download"] = not settings.pop("offline")
    # Relative paths in a recipe are relative to the recipe, so recipes work from any directory.
    for key in ("weights", "output", "run_dir", "data_root"):
        if isinstance(settings.get(key), str) and not Path(settings[key]).expanduser().is_absolute():
            settings[key] = str((path.parent / settings[key]).resolve())
    if isinstance(settings.get("data"), str) and settings["data"].startswith("folder:"):
        folder = Path(settings["data"].removeprefix("folder:")).expanduser()
        if not folder.is_absolute():
            settings["data"] = f"folder:{(path.parent / folder).resolve()}"
    validate(settings, origin=str(path))
    return settings


def validate(settings: dict, origin: str = "settings") -> TrainConfig:
    try:
        return TrainConfig(**settings)
    except ValidationError as error:
        raise _all_errors(error, origin) from None


def recipe_settings(recipe: str | Path | None = None, **overrides: object) -> dict:
    """The recipe's settings, then explicit overrides on top (None means 'not given'); not yet validated."""
    settings = read_recipe(recipe) if recipe else {}
    given = {k: v for k, v in overrides.items() if v is not None}
    # The starting weights are one choice: a flag naming one source replaces the recipe's other source, as flags win.
    for flag, other in (("weights", "pretrained"), ("pretrained", "weights")):
        if flag in given and other not in given:
            settings.pop(other, None)
    settings.update(given)
    return settings


def make_config(recipe: str | Path | None = None, **overrides: object) -> TrainConfig:
    """Defaults, then the recipe, then explicit overrides (None means 'not given')."""
    return validate(recipe_settings(recipe, **overrides), origin=str(recipe) if recipe else "settings")
