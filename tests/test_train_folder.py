"""End to end on a user's photo folder: colour images, odd sizes, a broken file, into a 1-channel model."""

from __future__ import annotations

import numpy as np
from PIL import Image

import graft


def _photos(root, per_class: int = 10):
    rng = np.random.default_rng(0)
    colours = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
    for name, colour in colours.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            h, w = rng.integers(12, 40, size=2)
            pixels = np.clip(np.array(colour) + rng.normal(0, 10, (h, w, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.{'png' if i % 2 else 'jpg'}")
    (root / "red" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    return colours


def test_train_on_a_folder_and_predict_a_photo(tmp_path):
    colours = _photos(tmp_path / "photos")
    result = graft.train(
        data=f"folder:{tmp_path / 'photos'}",
        model="resnet10t",
        input_mode="fold",
        size=16,
        epochs=12,
        batch_size=8,
        workers=0,
        run_dir=str(tmp_path / "run"),
    )
    bundle = graft.load(result.bundle.path)
    assert bundle.classes == ["blue", "green", "red"]
    assert bundle.spec.channels == 1, "colour photos meet a fold model through luminance"
    assert result.bundle.provenance.data.train + result.bundle.provenance.data.valid == 24
    photo = tmp_path / "query.png"
    Image.fromarray(np.full((30, 20, 3), colours["green"], np.uint8)).save(photo)
    (prediction,) = bundle.predict(photo, top_k=3)
    assert prediction.classes[0] == "green" and sorted(prediction.classes) == ["blue", "green", "red"]
    assert abs(sum(prediction.probabilities) - 1) < 1e-5
    evaluated = graft.evaluate(bundle)
    assert evaluated.accuracy == result.bundle.metrics["test_acc"]
    everything = graft.evaluate(bundle, split="all")
    assert len(everything.labels) == 30, "every readable photo, the broken one skipped"


def test_eval_finds_a_relative_folder_from_elsewhere(tmp_path, monkeypatch):
    _photos(tmp_path / "photos", per_class=4)
    monkeypatch.chdir(tmp_path)
    result = graft.train(data="folder:photos", model="resnet10t", size=16, epochs=1, batch_size=4, workers=0)
    assert result.bundle.provenance.data.source == f"folder:{(tmp_path / 'photos').resolve()}"
    monkeypatch.chdir("/")
    bundle_path = tmp_path / result.bundle.path  # the run was written relative to tmp_path
    assert graft.evaluate(bundle_path).accuracy == result.bundle.metrics["test_acc"]
