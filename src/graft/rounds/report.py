"""The rounds report: accuracy matrix and metrics as a text table, JSON (`DIR/report.json`) and a heatmap PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from graft.io import atomic_write_json


def _pct(value: float | None) -> str:
    return "—" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.1%}"


def matrix_table(names: list[str], matrix: np.ndarray) -> list[str]:
    """Rows: the model after each round; columns: each round's test split."""
    width = max([len(n) for n in names] + [8])
    lines = [" " * (width + 8) + "  ".join(f"{n[:width]:>{width}}" for n in names)]
    for i, name in enumerate(names):
        cells = "  ".join(f"{_pct(float(v)):>{width}}" for v in matrix[i])
        lines.append(f"after {name[:width]:<{width}}  {cells}")
    return lines


def metrics_table(names: list[str], metrics: list[dict | None]) -> list[str]:
    lines = [f"{'round':<16} {'avg acc':>8} {'BWT':>8} {'forget':>8} {'max fgt':>8}"]
    for name, m in zip(names, metrics, strict=True):
        if m is None:
            continue
        lines.append(
            f"{name[:16]:<16} {_pct(m['average_accuracy']):>8} {_pct(m['backward_transfer']):>8} "
            f"{_pct(m['forgetting']):>8} {_pct(m['max_forgetting']):>8}"
        )
    return lines


def plot_matrix(names: list[str], matrix: np.ndarray, path: Path, *, title: str = "") -> Path:
    """Heatmap of R[i, j]: row i the model after round i, column j round j's test split; blank where unmeasured."""
    from graft.report.plots import plot_round_matrix

    return plot_round_matrix(names, matrix, Path(path), title=title)


def write_report(directory: Path, state: dict, names: list[str], matrix: np.ndarray) -> dict:
    """report.json and matrix.png in the project directory; returns their paths."""
    json_path = atomic_write_json(directory / "report.json", state)
    png_path = plot_matrix(names, matrix, directory / "matrix.png", title=f"accuracy matrix: {directory.name}")
    return {"json": str(json_path), "heatmap": str(png_path)}
