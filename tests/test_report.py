"""Figures and HTML reports: valid PNGs for edge cases, escaped self-contained HTML, no temp files left."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from graft.report.html import write_html_report
from graft.report.plots import plot_confusion_matrix, plot_image_grid, plot_learning_curves


def _assert_png(path: Path) -> None:
    assert path.is_file()
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size[0] > 0 and image.size[1] > 0


def _only_files(directory: Path, *names: str) -> None:
    """No leftover temp files (atomic writes put `.name.*.tmp` beside the target)."""
    assert sorted(p.name for p in directory.iterdir()) == sorted(names)


def _record(epoch: int, **extra: float | None) -> dict:
    return {"epoch": epoch, "train_loss": 1.0 / epoch, "train_acc": 0.5 + 0.1 * epoch, **extra}


def test_learning_curves_several_epochs(tmp_path: Path) -> None:
    history = [_record(e, valid_loss=1.2 / e, valid_acc=0.45 + 0.1 * e) for e in range(1, 5)]
    out = plot_learning_curves(history, tmp_path / "curves.png", title="run <1>")
    assert out == tmp_path / "curves.png"
    _assert_png(out)
    _only_files(tmp_path, "curves.png")


def test_learning_curves_single_epoch(tmp_path: Path) -> None:
    _assert_png(plot_learning_curves([_record(1, valid_loss=0.9, valid_acc=0.6)], tmp_path / "c.png"))


@pytest.mark.parametrize("valid", [{}, {"valid_loss": None, "valid_acc": None}])
def test_learning_curves_missing_valid(tmp_path: Path, valid: dict) -> None:
    history = [_record(e, **valid) for e in (1, 2)]
    _assert_png(plot_learning_curves(history, tmp_path / "c.png"))


def test_learning_curves_empty_history(tmp_path: Path) -> None:
    _assert_png(plot_learning_curves([], tmp_path / "c.png"))


@pytest.mark.parametrize("n", [3, 30])
def test_confusion_matrix(tmp_path: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    matrix = rng.integers(0, 20, size=(n, n)) + np.eye(n, dtype=int) * 50
    matrix[0] = 0  # a class with no samples must not divide by zero
    classes = [f"class_with_a_long_name_{i}" if i % 2 else str(i) for i in range(n)]
    out = plot_confusion_matrix(matrix, classes, tmp_path / "cm.png", title="confusion")
    _assert_png(out)
    _only_files(tmp_path, "cm.png")


def test_confusion_matrix_figure_size_is_capped(tmp_path: Path) -> None:
    n = 200
    plot_confusion_matrix(np.eye(n, dtype=int), [str(i) for i in range(n)], tmp_path / "cm.png")
    with Image.open(tmp_path / "cm.png") as image:
        assert max(image.size) <= 2200


def test_confusion_matrix_shape_mismatch(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not match"):
        plot_confusion_matrix(np.zeros((3, 3)), ["a", "b"], tmp_path / "cm.png")
    _only_files(tmp_path)


def test_image_grid_mixed(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = [
        rng.integers(0, 256, size=(8, 8, 1), dtype=np.uint8),
        rng.integers(0, 256, size=(32, 24, 3), dtype=np.uint8),
        rng.integers(0, 256, size=(16, 16, 1), dtype=np.uint8),
        rng.integers(0, 256, size=(20, 40, 3), dtype=np.uint8),
        rng.integers(0, 256, size=(12, 12), dtype=np.uint8),
    ]
    captions = [f"true {i} → pred {9 - i} (0.87)" for i in range(len(images))]
    out = plot_image_grid(
        images,
        captions,
        tmp_path / "grid.png",
        title="misclassified",
        columns=3,
        wrong=[True, False] * 2 + [True],
    )
    _assert_png(out)
    _only_files(tmp_path, "grid.png")


def test_image_grid_single_image(tmp_path: Path) -> None:
    _assert_png(plot_image_grid([np.zeros((4, 4, 3), np.uint8)], ["x"], tmp_path / "g.png"))


def test_image_grid_zero_images(tmp_path: Path) -> None:
    _assert_png(plot_image_grid([], [], tmp_path / "g.png", title="misclassified"))
    _only_files(tmp_path, "g.png")


def test_image_grid_caption_count_mismatch(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="captions"):
        plot_image_grid([np.zeros((4, 4, 3), np.uint8)], [], tmp_path / "g.png")


def test_html_report(tmp_path: Path) -> None:
    png = plot_learning_curves([_record(1)], tmp_path / "curves.png")
    out = write_html_report(
        tmp_path / "report.html",
        title="Run <digits> & co",
        summary={"model": "resnet18", "accuracy": 0.9731},
        sections=[
            ("Config", {"lr": 0.001, "epochs": 3}),
            ("Per class", [{"class": "<0>", "recall": 0.98}, {"class": "1", "recall": 0.95, "extra": 7}]),
            ("Notes", "line one\nline <two>"),
            ("Short", "just a sentence"),
        ],
        images=[("Learning curves", png)],
    )
    text = out.read_text(encoding="utf-8")
    assert "<title>Run &lt;digits&gt; &amp; co</title>" in text
    assert "<digits>" not in text
    assert 'name="viewport"' in text
    for value in (
        "resnet18",
        "0.9731",
        "0.001",
        "&lt;0&gt;",
        "0.95",
        "extra",
        "line &lt;two&gt;",
        "just a sentence",
    ):
        assert value in text
    assert text.count('src="data:image/png;base64,') == 1
    assert "Learning curves" in text
    assert "http://" not in text and "https://" not in text
    _only_files(tmp_path, "curves.png", "report.html")


def test_html_report_empty(tmp_path: Path) -> None:
    out = write_html_report(tmp_path / "r.html", title="t", summary={}, sections=[], images=[])
    assert "<h1>t</h1>" in out.read_text(encoding="utf-8")
    _only_files(tmp_path, "r.html")
