"""A bundle grown by `graft surgery --size-mode stem` is a whole bundle: it saves, loads, predicts, exports to ONNX
with parity, takes further surgery and trains (the size stem's gains learn)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as TF

import graft
from cli_helpers import run_cli as run
from graft.data.preprocess import normalise, to_model_input


def test_the_cli_grows_an_exact_bundle_that_loads_and_predicts(tiny_run, tmp_path, capsys):
    out = tmp_path / "grown"
    args = ["surgery", str(tiny_run.bundle.path), "-o", str(out), "--size", "32", "--size-mode", "stem"]
    code, _, err = run([*args, "--require", "exact", "--probe", "digits"], capsys)
    assert code == 0, err
    assert "exact" in err and "size stem" in err, err
    record = json.loads((out / "graft.json").read_text())
    assert record["architecture"]["size_stem"] == {"network_size": [16, 16]}
    assert record["input"]["size"] == [32, 32]
    step = record["provenance"]["surgery"][-1]["steps"][0]
    assert step["verdict"] == "exact" and step["details"]["mode"] == "stem"
    assert 0 <= step["details"]["preprocessing_delta_levels"] <= 1.0  # bilinear: the uint8 kernel's rounding
    # the data now reach the network through two resizes: the old metrics are kept aside, not claimed
    assert record["metrics"] == {} and record["provenance"]["metrics_before_surgery"]

    code, text, _ = run(["info", str(out)], capsys)
    assert code == 0 and "size stem   32×32 → 16×16" in text
    code, text, _ = run(["surgery", "--help"], capsys)
    assert "--size-mode" in text and "resample" in text

    old, new = tiny_run.bundle, graft.load(out)
    generator = torch.Generator().manual_seed(0)
    pixels = torch.rand((6, 1, 32, 32), generator=generator)
    reference = old.logits(normalise(TF.resize(pixels, [16, 16], antialias=True), old.spec))
    assert float((reference - reference.mean(0)).abs().max()) > 1e-3  # the reference depends on its input
    assert float((new.logits(normalise(pixels, new.spec)) - reference).abs().max()) <= 1e-4

    images = [np.asarray(TF.resize(torch.from_numpy(i), [32, 32])).transpose(1, 2, 0) for i in _digit_images()]
    for image, prediction in zip(images, new.predict(images), strict=True):
        expected = old.predict(
            TF.resize(torch.from_numpy(image.transpose(2, 0, 1)), [16, 16]).numpy().transpose(1, 2, 0)
        )
        assert prediction.classes[0] == expected[0].classes[0]


def _digit_images() -> list[np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits().images[:8]
    return [(np.kron(d, np.ones((2, 2))) * 255 / 16).astype(np.uint8)[None] for d in digits]


def test_a_grown_bundle_exports_to_onnx_with_parity(tiny_run, tmp_path):
    out = tmp_path / "grown"
    graft.reshape(tiny_run.bundle.path, out, size=48, size_mode="stem")
    record = graft.export(out, format="onnx")
    assert record.passed and record.max_abs_logit_delta <= 1e-4


def test_further_surgery_on_a_grown_bundle_stays_exact(tiny_run, tmp_path):
    grown = tmp_path / "grown"
    graft.reshape(tiny_run.bundle.path, grown, size=32, size_mode="stem")
    again = graft.reshape(
        grown, tmp_path / "again", channels=3, size=40, size_mode="stem", insert_after="layer2", block="residual"
    )
    assert [c.verdict for c in again.certificates] == ["exact"] * 3, [c.line() for c in again.certificates]
    assert again.overall is not None and again.overall.verdict == "exact", again.overall.line()
    bundle = graft.load(tmp_path / "again")
    assert bundle.spec.size == (40, 40) and bundle.spec.channels == 3
    assert bundle.architecture.network_size == (16, 16)
    assert bundle.model.size_stem.height_kernel.shape == (16, 40)


def test_resampling_a_grown_bundle_is_refused_in_one_line(tiny_run, tmp_path, capsys):
    grown = tmp_path / "grown"
    graft.reshape(tiny_run.bundle.path, grown, size=32, size_mode="stem")
    args = ["surgery", str(grown), "-o", str(tmp_path / "x"), "--size", "64"]
    code, _, err = run([*args, "--size-mode", "resample"], capsys)
    assert code == 2 and "--size-mode stem" in err and not (tmp_path / "x").exists()
    code, _, err = run(["surgery", str(grown), "-o", str(tmp_path / "x"), "--size", "64", "--size-mode", "big"], capsys)
    assert code == 2 and "stem or resample" in err


def test_training_a_grown_bundle_teaches_its_size_stem(tiny_run, tmp_path):
    grown = tmp_path / "grown"
    graft.reshape(tiny_run.bundle.path, grown, size=32, size_mode="stem")
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (np.kron(digits.images[:192], np.ones((2, 2))) * 255 / 16).astype(np.uint8)  # 192 images at 32 px
    result = graft.train(
        data=(images, digits.target[:192]), classes=[str(i) for i in range(10)], weights=str(grown), epochs=1,
        batch_size=32, lr=1e-3, workers=0, run_dir=str(tmp_path / "run"), output=str(tmp_path / "trained"),
    )  # fmt: skip
    trained = graft.load(tmp_path / "trained")
    assert trained.architecture.network_size == (16, 16) and trained.spec.size == (32, 32)
    stem = trained.model.size_stem
    assert float(stem.height_gain.detach().abs().max()) > 0, "the size stem did not learn"
    assert torch.equal(stem.height_kernel, graft.load(grown).model.size_stem.height_kernel)  # a buffer: fixed
    assert result.bundle.metrics
    batch = to_model_input(torch.full((2, 1, 32, 32), 100, dtype=torch.uint8), trained.spec)
    assert trained.logits(batch).shape == (2, 10)


def test_training_a_grown_bundle_at_another_size_is_refused(tiny_run, tmp_path):
    from graft.errors import GraftError

    grown = tmp_path / "grown"
    graft.reshape(tiny_run.bundle.path, grown, size=32, size_mode="stem")
    with pytest.raises(GraftError, match="size stem"):
        graft.train(data="digits", weights=str(grown), size=48, epochs=1, run_dir=str(tmp_path / "run"))
