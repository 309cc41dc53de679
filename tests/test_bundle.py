"""Bundles round-trip exactly, are written atomically, and refuse to be damaged."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import graft
from graft.bundle import Bundle
from graft.errors import GraftError
from graft.models import create_model
from graft.record import Provenance


def _bundle(mode: str = "fold", head: str = "pool", name: str = "resnet10t", size: int = 24) -> Bundle:
    torch.manual_seed(0)
    model, arch, spec, _ = create_model(name, 4, input_mode=mode, head=head, size=size)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return Bundle(model.eval(), arch, spec, ["a", "b", "c", "d"], {"test_acc": 0.5}, {"note": "test"})


def _logits(bundle: Bundle, images: list[np.ndarray]) -> torch.Tensor:
    with torch.no_grad():
        return bundle.model.eval()(torch.cat([bundle.model_input(image) for image in images]))


@pytest.mark.parametrize(
    ("mode", "head", "name"),
    [
        ("replicate", "pool", "resnet10t"),
        ("fold", "pool", "resnet10t"),
        ("stem", "pool", "resnet10t"),
        ("replicate", "flatten", "resnet10t"),
        ("fold", "flatten", "mobilenetv3_small_050"),
        ("fold", "pool", "vit_tiny_patch16_224"),
    ],
)
def test_save_load_gives_identical_logits(tmp_path, mode, head, name):
    bundle = _bundle(mode, head, name)
    bundle.save(tmp_path / "b")
    loaded = graft.load(tmp_path / "b")
    images = [np.random.default_rng(i).integers(0, 256, (30, 26, 1), dtype=np.uint8) for i in range(5)]
    assert torch.equal(_logits(bundle, images), _logits(loaded, images))
    assert [p.probabilities for p in bundle.predict(images)] == [p.probabilities for p in loaded.predict(images)]
    assert loaded.spec == bundle.spec
    assert loaded.classes == ["a", "b", "c", "d"]
    assert loaded.architecture == bundle.architecture
    meta = json.loads((tmp_path / "b" / "graft.json").read_text())
    assert meta["input"]["mode"] == mode and meta["input"]["channels"] == bundle.spec.channels
    assert "input_mode" not in meta["architecture"]  # the input spec is its one owner (version 2)


def test_existing_bundle_is_not_replaced_without_overwrite(tmp_path):
    first, second = _bundle(), _bundle("replicate")
    first.save(tmp_path / "b")
    before = (tmp_path / "b" / "model.safetensors").read_bytes()
    with pytest.raises(GraftError, match="already exists"):
        second.save(tmp_path / "b")
    assert (tmp_path / "b" / "model.safetensors").read_bytes() == before
    second.save(tmp_path / "b", overwrite=True)
    assert graft.load(tmp_path / "b").spec.mode == "replicate"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"], "no temp directories left behind"


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    import graft.record as record_module

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(record_module, "atomic_write_json", explode)  # graft.json fails after the weights
    with pytest.raises(OSError):
        _bundle().save(tmp_path / "b")
    assert list(tmp_path.iterdir()) == []


def test_predict_top_k_sums_and_orders(tmp_path):
    bundle = _bundle()
    images = [torch.randint(0, 256, (20, 12, 1), dtype=torch.uint8).numpy(), torch.zeros(40, 40, 3).byte().numpy()]
    predictions = bundle.predict(images, top_k=3)
    assert len(predictions) == 2
    for p in predictions:
        assert len(p.classes) == 3 and p.probabilities == sorted(p.probabilities, reverse=True)
        assert set(p.classes) <= {"a", "b", "c", "d"}
    assert sum(bundle.predict(images[0], top_k=10)[0].probabilities) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "graft.json").unlink(), "graft.json is missing"),
        (lambda d: (d / "model.safetensors").unlink(), "model.safetensors is missing"),
        (lambda d: (d / "graft.json").write_text("{not json"), "damaged"),
        (lambda d: (d / "model.safetensors").write_bytes(b"garbage"), "model.safetensors is damaged: not a safetens"),
        (lambda d: (d / "graft.json").write_text(json.dumps({"format": "other"})), "not a graft bundle description"),
        (lambda d: _edit_meta(d, version=99), "newer than this graft reads"),
        (lambda d: _edit_meta(d, architecture="resnet"), "damaged"),
        (lambda d: _edit_meta(d, input={"size": [8, 8]}), "damaged"),
        (lambda d: _edit_meta(d, classes=["a"]), "1 class names for a 4-class model"),
        (lambda d: _edit_meta(d, input={**_meta(d)["input"], "interpolation": "lanczos"}), "input.interpolation"),
    ],
)
def test_damaged_bundles_give_one_line_errors(tmp_path, damage, message):
    _bundle().save(tmp_path / "b")
    damage(tmp_path / "b")
    with pytest.raises(GraftError, match=message) as caught:
        graft.load(tmp_path / "b")
    assert "\n" not in str(caught.value)


def _meta(directory) -> dict:
    return json.loads((directory / "graft.json").read_text())


def test_missing_provenance_is_fine(tmp_path):
    _bundle().save(tmp_path / "b")
    _edit_meta(tmp_path / "b", provenance=None, metrics=None)
    loaded = graft.load(tmp_path / "b")
    assert loaded.provenance == Provenance() and graft.info(loaded)["classes"] == ["a", "b", "c", "d"]


def _edit_meta(directory, **changes) -> None:
    meta = json.loads((directory / "graft.json").read_text())
    meta.update(changes)
    (directory / "graft.json").write_text(json.dumps(meta))


def test_predict_refuses_arrays_it_cannot_read():
    bundle = _bundle()
    for bad in (np.zeros((3, 8, 8), np.float32), np.zeros((8, 8, 4), np.uint8), np.zeros((2, 8, 8, 3), np.uint8)):
        with pytest.raises(GraftError, match="uint8"):
            bundle.predict(bad)


def test_predict_in_chunks_equals_one_batch():
    bundle = _bundle()
    images = [np.random.default_rng(i).integers(0, 256, (20, 20, 3), dtype=np.uint8) for i in range(7)]
    whole = bundle.predict(images, top_k=4)
    chunked = bundle.predict(images, top_k=4, batch_size=3)
    for a, b in zip(whole, chunked, strict=True):
        assert a.classes == b.classes and a.probabilities == pytest.approx(b.probabilities, abs=1e-6)


def test_load_rejects_non_bundles(tmp_path):
    with pytest.raises(GraftError, match="not a bundle directory"):
        graft.load(tmp_path / "nothing")
