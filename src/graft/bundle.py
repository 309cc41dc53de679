"""The bundle: a directory with `model.safetensors` and `graft.json`, the contract between every graft command.

`graft.json` holds everything needed to rebuild the model and feed it: the timm architecture and kwargs, the
input spec, the class names, metrics and provenance. Bundles are written into a temp directory and renamed
into place, so an interrupted write never leaves a half-written bundle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from graft.data.image_limits import DEFAULT_LIMITS, ImageLimits
from graft.data.preprocess import hwc_to_tensor, to_model_input
from graft.errors import GraftError, first_line
from graft.io import atomic_directory
from graft.models.factory import GraftModel, build_model, count_parameters
from graft.record import (
    FORMAT,
    META_FILE,
    WEIGHTS_FILE,
    Architecture,
    BundleRecord,
    ConfidenceRecord,
    Provenance,
    is_bundle,
    make_record,
)
from graft.record import read as read_record
from graft.record import write as write_record
from graft.spec import InputSpec

ImageInput = str | Path | bytes | np.ndarray


@dataclass
class Prediction:
    """Top-k classes of one image, most likely first."""

    classes: list[str]
    probabilities: list[float]

    def to_dict(self) -> dict:
        return {"top": [{"class": c, "probability": p} for c, p in zip(self.classes, self.probabilities, strict=True)]}


@dataclass
class Bundle:
    """A trained model with everything needed to use it: architecture, input spec, classes, provenance."""

    model: GraftModel
    architecture: Architecture
    spec: InputSpec
    classes: list[str]
    metrics: dict = field(default_factory=dict)
    provenance: Provenance = field(default_factory=Provenance)
    path: Path | None = None
    exports: dict = field(default_factory=dict)  # `graft.json` → exports as read (graft.record.export_record types it)
    confidence: ConfidenceRecord | None = None  # when the top class is an answer (None: the default threshold)

    def __post_init__(self) -> None:
        if not isinstance(self.provenance, Provenance):  # a plain dict from a caller: validated once, here
            self.provenance = Provenance.model_validate(self.provenance or {})

    # ---- persistence -------------------------------------------------------------------------------------
    def record(self) -> BundleRecord:
        """This bundle's `graft.json`, validated (exports are dropped: they describe files of the saved bundle)."""
        return make_record(
            self.architecture,
            self.spec,
            self.classes,
            parameters=count_parameters(self.model),
            metrics=self.metrics,
            provenance=self.provenance,
            confidence=self.confidence,
        )

    def metadata(self) -> dict:
        """The record as JSON-ready data (what `graft info` and `GET /v1/model` show)."""
        record = self.record().to_json()
        record["exports"] = dict(self.exports)
        return record

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the bundle atomically; an existing bundle is only replaced with `overwrite=True`.

        Even then, only a bundle or an empty directory is replaced: `--force` must never delete someone's folder.
        """
        path = Path(path)
        record = self.record()  # validated before anything is written
        if overwrite:
            check_replaceable(path)
        try:
            with atomic_directory(path, overwrite=overwrite) as tmp:
                state = {k: v.detach().contiguous().cpu() for k, v in self.model.state_dict().items()}
                save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT})
                write_record(tmp, record)
        except FileExistsError:
            raise GraftError(f"{path} already exists; choose another output or pass --force") from None
        self.path = path
        self.exports = {}
        return path

    # ---- inference ---------------------------------------------------------------------------------------
    def model_input(
        self, image: ImageInput, *, limits: ImageLimits = DEFAULT_LIMITS, name: str | None = None
    ) -> torch.Tensor:
        """One image (file, encoded bytes or HxWxC uint8 array) → a (1, C, H, W) float tensor per the spec.

        Decoded images are reduced to the model's size at once, so many large photos never sit in memory together.
        `limits` refuses images whose header is too large before decoding them (graft.data.image_limits); `name`
        labels errors.
        """
        from graft.data.images import decode_image

        if isinstance(image, np.ndarray):
            return to_model_input(hwc_to_tensor(_check_array(image)), self.spec)
        array = decode_image(image, limits=limits, name=name)
        return to_model_input(hwc_to_tensor(array), self.spec)

    def predict(
        self,
        images: ImageInput | Sequence[ImageInput],
        top_k: int = 5,
        *,
        batch_size: int = 64,
        limits: ImageLimits = DEFAULT_LIMITS,
    ) -> list[Prediction]:
        """Top-k classes for image files, encoded bytes or HxWxC uint8 arrays, in the order given.

        Every image is decoded and checked before the first forward pass, so a bad file fails the call early.
        """
        if isinstance(images, str | Path | bytes | np.ndarray):
            images = [images]
        return self.predict_inputs([self.model_input(image, limits=limits) for image in images], top_k, batch_size)

    def predict_inputs(self, inputs: list[torch.Tensor], top_k: int = 5, batch_size: int = 64) -> list[Prediction]:
        """Top-k classes for `model_input` tensors (1, C, H, W), run in batches."""
        predictions = []
        for start in range(0, len(inputs), batch_size):
            predictions += self.rank(self.logits(torch.cat(inputs[start : start + batch_size])), top_k)
        return predictions

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """The model's logits for a batch of `model_input` tensors (N, C, H, W), without gradients."""
        self.model.eval()
        with torch.no_grad():
            return self.model(batch)

    def rank(self, logits: torch.Tensor, top_k: int = 5) -> list[Prediction]:
        """Logits (N, classes) from any engine → the top-k classes of each row, most likely first.

        Shared by `predict` and the server, so both report probabilities the same way.
        """
        if not bool(torch.isfinite(logits).all()):
            raise GraftError("the model gave non-finite scores (NaN or infinity) for this image; no prediction")
        k = max(1, min(top_k, len(self.classes)))
        values, indices = torch.softmax(logits, dim=1).topk(k, dim=1)
        return [
            Prediction([self.classes[i] for i in row_i.tolist()], [float(v) for v in row_v.tolist()])
            for row_v, row_i in zip(values, indices, strict=True)
        ]


def _check_array(image: np.ndarray) -> np.ndarray:
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3)):
        raise GraftError(f"arrays must be HxW or HxWxC uint8 with C = 1 or 3, got {image.dtype} {image.shape}")
    return image


def check_replaceable(path: Path) -> None:
    """Refuse to replace anything but an existing bundle or an empty directory."""
    if not path.exists():
        return
    if path.is_dir() and not any(path.iterdir()):
        return
    if not is_bundle(path):
        raise GraftError(f"{path} exists and is not a graft bundle; refusing to replace it, even with --force")


def load(path: str | Path, *, record: BundleRecord | None = None) -> Bundle:
    """Read a bundle directory; every way it can be broken is a one-line GraftError.

    `record` is the bundle's record when the caller has read it already (a command reads `graft.json` once).
    """
    path = Path(path)
    weights_path = path / WEIGHTS_FILE
    if not path.is_dir():
        raise GraftError(f"{path} is not a bundle directory")
    record = record if record is not None else read_record(path)
    if not weights_path.is_file():
        raise GraftError(f"{path} is not a graft bundle: {WEIGHTS_FILE} is missing")
    arch, spec = record.arch, record.spec
    header = _weights_header(weights_path)
    expected = _expected_shapes(arch, spec)
    _check_fit(expected, header, weights_path)
    model = build_model(arch, spec)
    if expected is None:  # not buildable on meta: the real model's shapes are checked instead
        _check_fit({name: tuple(t.shape) for name, t in model.state_dict().items()}, header, weights_path)
    try:
        state = load_file(str(weights_path))
        model.load_state_dict(state, strict=True)
    except Exception as error:
        raise GraftError(f"{weights_path} does not fit the architecture in {META_FILE}: {first_line(error)}") from None
    _check_finite(state, weights_path)
    model.eval()
    return Bundle(
        model,
        arch,
        spec,
        list(record.classes),
        dict(record.metrics),
        record.provenance,
        path,
        dict(record.exports),
        record.confidence,
    )


def _weights_header(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes from the safetensors header, without reading the tensors."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}  # noqa: SIM118
    except Exception as error:
        raise GraftError(f"{path} is damaged: not a safetensors file ({first_line(error, 120)})") from None


def _expected_shapes(arch: Architecture, spec: InputSpec) -> dict[str, tuple[int, ...]] | None:
    """The state dict's shapes, from the model built on the meta device (no memory, no init): a record claiming a
    huge model is refused against the weights file before anything is allocated. None where a model cannot be
    built on meta (the real build is then checked instead)."""
    try:
        with torch.device("meta"):
            return {name: tuple(t.shape) for name, t in build_model(arch, spec).state_dict().items()}
    except GraftError:
        raise
    except Exception:
        return None


def _check_fit(expected: dict[str, tuple[int, ...]] | None, header: dict[str, tuple[int, ...]], path: Path) -> None:
    """One line naming the first tensor that the weights file and the architecture disagree on (and how many)."""
    if expected is None:
        return
    problems = [f"{name} is missing" for name in expected if name not in header]
    problems += [f"{name} is not in the architecture" for name in header if name not in expected]
    problems += [
        f"{name} is {list(header[name])} in the file but {list(shape)} in the architecture"
        for name, shape in expected.items()
        if name in header and header[name] != shape
    ]
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise GraftError(f"{path} does not fit the architecture in {META_FILE}: {problems[0]}{more}")


def _check_finite(state: dict[str, torch.Tensor], path: Path) -> None:
    """Refuse weights holding NaN or infinities: such a model answers NaN for every image."""
    broken = [name for name, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if broken:
        more = f" and {len(broken) - 1} more" if len(broken) > 1 else ""
        raise GraftError(f"{path} holds NaN or infinite weights ({broken[0]}{more}); the model cannot be used")
