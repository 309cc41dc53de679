"""graft_cnn_s / graft_cnn_m: small CNNs registered with timm by graft, so every graft feature treats them as timm
models (build, fold, train, save, load, surgery, export, serve)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import httpx
import pytest
import timm
import torch
from PIL import Image

import graft
from cli_helpers import run_cli
from graft.exports import read_exports
from graft.models.small_cnn import SmallCNN
from graft.serve import create_app
from serve_helpers import digit, encode, live_server


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """graft_cnn_s on scikit-learn digits at 16×16 with the fast recipe's options (a few seconds)."""
    out = tmp_path_factory.mktemp("small")
    return graft.train(
        data="digits",
        model="graft_cnn_s",
        input_mode="fold",
        size=16,
        epochs=2,
        batch_size=64,
        augment="reference",
        augment_engine="batch",
        channels_last=True,
        ema=0.9,
        precision="fp32",
        run_dir=str(out / "run"),
        output=str(out / "bundle"),
        workers=0,
    )


def test_registered_with_timm_when_graft_models_is_imported(small_run):
    code = (
        "import timm, sys\n"
        "assert not timm.is_model('graft_cnn_s')\n"
        "import graft.bundle\n"
        f"bundle = graft.bundle.load({str(small_run.bundle.path)!r})\n"
        "assert timm.is_model('graft_cnn_s') and timm.is_model('graft_cnn_m')\n"
        "print(bundle.architecture.timm_name, type(bundle.model.backbone).__name__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["graft_cnn_s", "SmallCNN"]


@pytest.mark.parametrize("name", ["graft_cnn_s", "graft_cnn_m"])
def test_the_timm_model_interface(name):
    model = timm.create_model(name, num_classes=7, in_chans=1).eval()
    x = torch.rand(2, 1, 28, 28)
    assert model(x).shape == (2, 7) and model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, 128)
    assert model.get_classifier().out_features == 7
    model.reset_classifier(3)
    assert model(x).shape == (2, 3)
    assert timm.get_pretrained_cfg(name).classifier == "head.fc"
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model(name, pretrained=True)
    with pytest.raises(TypeError):
        timm.create_model(name, no_such_option=1)
    with pytest.raises(ValueError, match="one depth"):
        SmallCNN(widths=(8, 16), depths=(1,))


def test_trains_saves_and_loads_by_its_timm_name(small_run):
    bundle = small_run.bundle
    assert bundle.architecture.timm_name == "graft_cnn_s" and bundle.architecture.kind == "timm"
    assert bundle.provenance.training["augment_engine"] == "batch"
    assert bundle.metrics["test_acc"] > 0.3  # 10 classes: it learned from the augmented batches
    loaded = graft.load(bundle.path)
    x = torch.rand(5, 1, 16, 16)
    assert torch.equal(loaded.logits(x), bundle.logits(x))
    assert not torch.equal(loaded.logits(x), loaded.logits(torch.rand(5, 1, 16, 16)))


def test_surgery_export_and_serve_work_on_it(small_run, tmp_path, capsys):
    source = small_run.bundle.path
    colour = tmp_path / "colour"
    code = run_cli(["surgery", str(source), "-o", str(colour), "--channels", "3", "--size", "24"], capsys)[0]
    assert code == 0
    changed = graft.load(colour)
    assert changed.spec.channels == 3 and changed.spec.size == (24, 24)
    assert changed.architecture.timm_name == "graft_cnn_s"

    served = tmp_path / "served"
    shutil.copytree(source, served)
    assert run_cli(["export", str(served)], capsys)[0] == 0
    assert read_exports(served)["onnx"]["passed"] is True

    pixels, _ = digit(3)
    data = encode(Image.fromarray(pixels))
    offline = graft.load(served).predict(data, top_k=3)[0]
    with live_server(create_app(served, engine="auto")) as url:
        response = httpx.post(f"{url}/v1/predict", content=data, headers={"content-type": "image/png"}, timeout=60)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["engine"] == "onnx"
    assert [t["class"] for t in body["top"][:3]] == [t["class"] for t in offline.to_dict()["top"]]
