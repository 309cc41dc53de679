"""PNG figures (learning curves, confusion matrix, example grids): quicker to read than columns of numbers.

Figures are built on `matplotlib.figure.Figure` with an explicit Agg canvas, never through pyplot, so they
work headless and touch no global backend or figure registry other code might rely on.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from graft.io import atomic_write_bytes

_DPI = 100
_MAX_CM_INCHES = 20.0
_ANNOTATE_MAX_CLASSES = 20


def _save(fig: Figure, path: Path) -> Path:
    """Render to PNG in memory, then write atomically so a reader never sees half an image."""
    buffer = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def _series(history: Sequence[dict], key: str, scale: float = 1.0) -> tuple[list[int], list[float]]:
    """Epochs and values for `key`, skipping records where it is missing or None."""
    epochs, values = [], []
    for record in history:
        value = record.get(key)
        if value is not None:
            epochs.append(int(record["epoch"]))
            values.append(float(value) * scale)
    return epochs, values


def _epoch_axis(ax: Axes, epochs: list[int]) -> None:
    """Whole-number epoch ticks, with room either side so a single epoch is not squeezed into 1.00±0.05."""
    if epochs:
        ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
    if 0 < len(epochs) <= 15:
        ax.set_xticks(sorted(set(epochs)))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def plot_learning_curves(history: list[dict], path: Path, *, title: str = "") -> Path:
    """Loss and accuracy per epoch, train vs valid, to spot over- and under-fitting at a glance."""
    fig = Figure(figsize=(10, 4), dpi=_DPI, layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    panels = ((loss_ax, "loss", "Loss", 1.0), (acc_ax, "acc", "Accuracy (%)", 100.0))
    for ax, metric, label, scale in panels:
        for split, style in (("train", "o-"), ("valid", "s--")):
            epochs, values = _series(history, f"{split}_{metric}", scale)
            if epochs:
                ax.plot(epochs, values, style, label=split, markersize=4)
        ax.set_xlabel("Epoch")
        ax.set_ylabel(label)
        _epoch_axis(ax, [int(r["epoch"]) for r in history])
        ax.grid(True, alpha=0.3)
        if ax.has_data():
            ax.legend()
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_confusion_matrix(matrix: np.ndarray, classes: list[str], path: Path, *, title: str = "") -> Path:
    """Row-normalised confusion matrix (rows true, columns predicted): shows which classes get mixed up."""
    counts = np.asarray(matrix)
    n = len(classes)
    if counts.shape != (n, n):
        raise ValueError(f"confusion matrix shape {counts.shape} does not match {n} classes")
    row_sums = counts.sum(axis=1, keepdims=True).astype(float)
    fractions = np.divide(counts, row_sums, out=np.zeros(counts.shape, dtype=float), where=row_sums > 0)

    longest = max((len(c) for c in classes), default=1)
    side = min(_MAX_CM_INCHES, max(4.0, 0.45 * n + 0.08 * longest + 2.0))
    fig = Figure(figsize=(side + 1.0, side), dpi=_DPI, layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.8, label="fraction of true class")

    cell_points = 72.0 * side / max(n, 1)
    label_size = min(10.0, max(4.0, 0.5 * cell_points))
    ax.set_xticks(range(n), classes, fontsize=label_size)
    ax.set_yticks(range(n), classes, fontsize=label_size)
    if longest > 3 or n > 20:
        ax.tick_params(axis="x", labelrotation=45)
        for tick in ax.get_xticklabels():
            tick.set_horizontalalignment("right")
            tick.set_rotation_mode("anchor")
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")

    if n <= _ANNOTATE_MAX_CLASSES:
        for i in range(n):
            for j in range(n):
                colour = "white" if fractions[i, j] > 0.5 else "black"
                ax.text(j, i, f"{counts[i, j]:g}", ha="center", va="center", color=colour, fontsize=8)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def _show(ax: Axes, image: np.ndarray) -> None:
    """Draw one HxW, HxWx1 or HxWx3 uint8 image; gray ones with a gray colormap, not viridis."""
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        ax.imshow(array, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(array, interpolation="nearest")


def plot_image_grid(
    images: list[np.ndarray],
    captions: list[str],
    path: Path,
    *,
    title: str = "",
    columns: int = 8,
    wrong: list[bool] | None = None,
) -> Path:
    """Images with captions in a grid, e.g. misclassified examples; red captions mark wrong predictions."""
    if len(captions) != len(images):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    if wrong is not None and len(wrong) != len(images):
        raise ValueError(f"{len(images)} images but {len(wrong)} 'wrong' flags")
    if not images:
        fig = Figure(figsize=(3, 1.5), dpi=_DPI)
        fig.text(0.5, 0.5, "no images", ha="center", va="center", fontsize=12)
        if title:
            fig.suptitle(title, fontsize=10)
        return _save(fig, path)

    columns = max(1, min(columns, len(images)))
    rows = math.ceil(len(images) / columns)
    fig = Figure(figsize=(1.6 * columns, 1.8 * rows + (0.4 if title else 0.0)), dpi=_DPI, layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()
    for index, ax in enumerate(axes):
        ax.set_axis_off()
        if index >= len(images):
            continue
        _show(ax, images[index])
        colour = "red" if wrong is not None and wrong[index] else "black"
        ax.set_title(captions[index], fontsize=7, color=colour)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_round_matrix(names: list[str], matrix: np.ndarray, path: Path, *, title: str = "") -> Path:
    """Heatmap of R[i, j]: row i the model after round i, column j round j's test split; blank where unmeasured."""
    n = len(names)
    side = min(16.0, max(4.0, 0.8 * n + 2.5))
    fig = Figure(figsize=(side + 1.0, side), dpi=_DPI, layout="constrained")
    ax = fig.subplots()
    shown = np.ma.masked_invalid(matrix.astype(float))
    image = ax.imshow(shown, cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.8, label="test accuracy")
    ax.set_xticks(range(n), names, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("test split of round")
    ax.set_ylabel("model after round")
    for i in range(n):
        for j in range(n):
            if not np.isnan(matrix[i, j]):
                colour = "black" if matrix[i, j] > 0.6 else "white"
                ax.text(j, i, f"{matrix[i, j]:.1%}", ha="center", va="center", color=colour, fontsize=8)
    ax.set_title(title or "accuracy matrix")
    return _save(fig, path)
