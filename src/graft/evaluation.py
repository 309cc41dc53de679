"""Evaluation: loss, accuracy, per-class precision/recall, confusion matrix and the examples it got wrong."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from rich.console import Console
from torch import nn

from graft.data.base import ImageSet
from graft.data.loader import count_batches, iter_batches
from graft.data.preprocess import to_model_input
from graft.errors import GraftError, Interrupted
from graft.io import atomic_write_json
from graft.progress import LOG_EVERY_S, batch_progress
from graft.record import DEFAULT_CONFIDENCE, DEFAULT_CONFIDENCE_THRESHOLD, NEVER_SURE, ConfidenceRecord
from graft.spec import InputSpec

THUMBNAIL_SIZE = 128  # pixels, the longest side of a misclassified example in the grid


@dataclass
class EvalResult:
    """Outcome of running a model over a labelled set (labels already in the model's class order)."""

    classes: list[str]
    labels: np.ndarray
    predicted: np.ndarray
    confidence: np.ndarray
    loss: float

    @property
    def accuracy(self) -> float:
        return float((self.predicted == self.labels).mean()) if len(self.labels) else 0.0

    @property
    def confusion(self) -> np.ndarray:
        n = len(self.classes)
        return np.bincount(self.labels * n + self.predicted, minlength=n * n).reshape(n, n)

    def per_class(self) -> list[dict]:
        matrix = self.confusion
        rows = []
        for i, name in enumerate(self.classes):
            true_pos, predicted, support = matrix[i, i], matrix[:, i].sum(), matrix[i].sum()
            rows.append(
                {
                    "class": name,
                    "precision": float(true_pos / predicted) if predicted else None,
                    "recall": float(true_pos / support) if support else None,
                    "support": int(support),
                }
            )
        return rows

    def to_dict(self) -> dict:
        return {
            "images": len(self.labels),
            "loss": self.loss,
            "accuracy": self.accuracy,
            "per_class": self.per_class(),
            "confusion_matrix": self.confusion.tolist(),
            "classes": self.classes,
        }


@contextlib.contextmanager
def ieee_float32() -> Iterator[None]:
    """Float32 convolutions and matrix products in IEEE float32 (not TF32) inside the block; the flags are restored.

    PyTorch runs cuDNN convolutions in TF32 by default (`torch.backends.cudnn.conv.fp32_precision` is "tf32"):
    on a GPU, "float32" validation and test metrics would come from 10-bit-mantissa products, not the float32
    arithmetic the bundle's recorded numbers claim and that `graft eval` on a CPU reproduces. Evaluation is a small
    share of a run, so it pays for exact float32; training keeps the process's setting (TF32 is fine for
    gradients). Only the new precision API is used: mixing it with the legacy `allow_tf32` flags makes PyTorch
    refuse to read them.
    """
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    saved = conv.fp32_precision, matmul.fp32_precision
    conv.fp32_precision = matmul.fp32_precision = "ieee"
    try:
        yield
    finally:
        conv.fp32_precision, matmul.fp32_precision = saved


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    spec: InputSpec,
    images: ImageSet,
    *,
    classes: list[str] | None = None,
    label_map: np.ndarray | None = None,
    batch_size: int = 256,
    workers: int = 2,
    console: Console | None = None,
    device: torch.device | str = "cpu",
    channels_last: bool = False,
    should_stop: Callable[[], bool] | None = None,
) -> EvalResult:
    """Run `model` over `images` in eval mode; `label_map` maps the set's labels to the model's classes.

    With a `console`, a transient progress bar shows batches, images/s and ETA (large folders take minutes), and
    where the console is no terminal (logs), a line every LOG_EVERY_S seconds. `device` and `channels_last` let
    training evaluate where and how it trains (always in IEEE float32: `ieee_float32`). `should_stop` is asked
    after every batch: when it says so, evaluation ends at once with `Interrupted` (training's Ctrl-C).
    """
    model.eval()
    device = torch.device(device)
    labels_all = images.labels if label_map is None else label_map[images.labels]
    predicted, confidence, total_loss = [], [], 0.0
    batches = iter_batches(images, spec, batch_size, workers=workers)
    total = count_batches(len(images), batch_size)
    started = last_log = time.perf_counter()
    with ieee_float32(), batch_progress(console, disable=console is None) as progress:
        task = progress.add_task(f"evaluating {images.name}", total=total, stats="")
        for done, (batch, labels) in enumerate(batches, start=1):
            x = to_model_input(batch, spec).to(device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            logits = model(x).float().cpu()
            if label_map is not None:
                labels = torch.from_numpy(label_map[labels.numpy()])
            total_loss += float(F.cross_entropy(logits, labels, reduction="sum"))
            top, index = logits.softmax(dim=1).max(dim=1)
            predicted.append(index.numpy())
            confidence.append(top.numpy())
            progress.update(task, advance=1)
            now = time.perf_counter()
            if console is not None and not console.is_terminal and now - last_log >= LOG_EVERY_S:
                eta = (now - started) / done * (total - done)
                console.print(f"  evaluating {images.name}: {done}/{total} batches  ETA {eta:.0f}s")
                last_log = now
            if should_stop is not None and done < total and should_stop():
                raise Interrupted(f"stopped while evaluating {images.name} ({done}/{total} batches)")
    n = len(images)
    return EvalResult(
        classes=list(classes or images.classes),
        labels=labels_all.astype(np.int64),
        predicted=np.concatenate(predicted) if predicted else np.zeros(0, np.int64),
        confidence=np.concatenate(confidence) if confidence else np.zeros(0, np.float32),
        loss=total_loss / max(n, 1),
    )


def class_map(data_classes: list[str], model_classes: list[str]) -> np.ndarray:
    """Index map from a data set's classes to a model's, by name; every data class must be known."""
    unknown = [c for c in data_classes if c not in model_classes]
    if unknown:
        raise GraftError(f"the data has classes the model does not know: {', '.join(unknown[:10])}")
    return np.array([model_classes.index(c) for c in data_classes], dtype=np.int64)


def misclassified(result: EvalResult, images: ImageSet, limit: int = 48) -> tuple[list[np.ndarray], list[str]]:
    """The most confidently wrong examples, with captions like 'true 4 → 9 (0.87)'."""
    wrong = np.flatnonzero(result.predicted != result.labels)
    wrong = wrong[np.argsort(-result.confidence[wrong])][:limit]
    pictures = [_thumbnail(images.image(int(i))) for i in wrong]
    captions = [
        f"true {result.classes[result.labels[i]]} → {result.classes[result.predicted[i]]} ({result.confidence[i]:.2f})"
        for i in wrong
    ]
    return pictures, captions


def _thumbnail(image: np.ndarray, largest: int = THUMBNAIL_SIZE) -> np.ndarray:
    """A grid cell needs no 12-megapixel photo: shrink big images (keeping aspect) as soon as they are decoded."""
    if max(image.shape[:2]) <= largest:
        return image
    picture = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)
    picture.thumbnail((largest, largest))
    return np.asarray(picture).reshape(picture.height, picture.width, image.shape[2])


def write_eval_outputs(result: EvalResult, images: ImageSet, out_dir: str | Path, *, title: str = "") -> dict:
    """eval.json, confusion.png and misclassified.png in `out_dir`; returns their paths."""
    from graft.report.plots import plot_confusion_matrix, plot_image_grid

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pictures, captions = misclassified(result, images)
    paths = {
        "json": atomic_write_json(out / "eval.json", result.to_dict()),
        "confusion": plot_confusion_matrix(result.confusion, result.classes, out / "confusion.png", title=title),
        "misclassified": plot_image_grid(
            pictures,
            captions,
            out / "misclassified.png",
            title=f"{title} misclassified",
            wrong=[True] * len(pictures),
        ),
    }
    return {k: str(v) for k, v in paths.items()}


CONFIDENCE_TARGET = 0.95  # the accuracy an answer shown as an answer should have had on validation
CONFIDENCE_MIN_IMAGES = 30  # fewer validation images than this calibrate nothing: the default threshold applies
CONFIDENCE_MAX_IMAGES = 2000  # a seeded sample of validation is enough to place the threshold, and quick


def calibrate_confidence(result: EvalResult, target: float = CONFIDENCE_TARGET) -> ConfidenceRecord:
    """The "not sure" threshold from validation predictions: the lowest top probability `t` such that the
    predictions at or above `t` were right at least `target` of the time, never below the default (even odds).

    A model that never reaches the target gets a threshold above all its validation confidences, so nothing it
    says is shown as an answer; too few images calibrate nothing and the documented default applies.
    """
    n = len(result.labels)
    if n < CONFIDENCE_MIN_IMAGES:
        return DEFAULT_CONFIDENCE.model_copy(update={"images": n})
    confidence = result.confidence.astype(np.float64)
    correct = (result.predicted == result.labels).astype(np.float64)
    order = np.argsort(-confidence, kind="stable")
    ranked, right = confidence[order], np.cumsum(correct[order])
    # Only the last position of a run of equal confidences is a threshold: "at or above t" takes the whole run.
    ends = np.flatnonzero(np.append(ranked[1:] != ranked[:-1], True))
    accurate = ends[right[ends] / (ends + 1) >= target]
    threshold = float(ranked[accurate.max()]) if len(accurate) else NEVER_SURE
    threshold = max(threshold, DEFAULT_CONFIDENCE_THRESHOLD)
    answered = confidence >= threshold
    return ConfidenceRecord(
        threshold=threshold,
        source="validation",
        target_accuracy=target,
        images=n,
        answered=float(answered.mean()),
        answered_accuracy=float(correct[answered].mean()) if answered.any() else None,
    )


def confidence_sample(images: ImageSet, seed: int = 0) -> ImageSet:
    """At most CONFIDENCE_MAX_IMAGES of `images`, drawn with a fixed seed."""
    if len(images) <= CONFIDENCE_MAX_IMAGES:
        return images
    positions = np.sort(np.random.default_rng(seed).choice(len(images), CONFIDENCE_MAX_IMAGES, replace=False))
    return images.subset(positions)
