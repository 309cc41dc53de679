"""Weights load by name and shape, files are read without pickle, and the report says what happened."""

from __future__ import annotations

import pickle

import pytest
import timm
import torch
from safetensors.torch import save_file

from graft import record
from graft.errors import GraftError
from graft.models import create_model, read_state_dict, transfer_weights
from graft.models.input_modes import find_first_conv, fold_weights


def _seeded(name: str, num_classes: int, *, path, **settings):
    """`create_model` seeded from a weights file or a bundle, as `graft train --weights` does it for a new model:
    the state dict by name and shape, with the normalisation a bundle records."""
    recorded = record.read(path) if (path / record.META_FILE).is_file() else None
    normalisation = (recorded.spec.backbone_mean, recorded.spec.backbone_std) if recorded is not None else None
    state = read_state_dict(path)
    return create_model(name, num_classes, source=state, source_name=str(path), normalisation=normalisation, **settings)


def _source_model():
    torch.manual_seed(123)
    model, *_ = create_model("resnet10t", 1000, size=32)
    return model.backbone.state_dict()


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_weights_file_loads_by_name_and_reports(tmp_path, fmt):
    source = _source_model()
    path = tmp_path / f"w.{fmt}"
    if fmt == "safetensors":
        save_file(source, str(path))
    else:
        torch.save({"state_dict": source}, path)
    model, _, _, report = _seeded("resnet10t", 5, size=32, path=path)
    state = model.backbone.state_dict()
    assert torch.equal(state["layer1.0.conv1.weight"], source["layer1.0.conv1.weight"])
    assert {s["name"] for s in report.skipped} == {"fc.weight", "fc.bias"}
    assert all("shape differs" in s["reason"] for s in report.skipped)
    assert set(report.initialised) == {"fc.weight", "fc.bias"}
    assert len(report.loaded) == len(source) - 2 and not report.adapted


def test_fold_reports_the_adapted_first_conv(tmp_path):
    source = _source_model()
    save_file(source, str(tmp_path / "w.safetensors"))
    model, _, spec, report = _seeded("resnet10t", 5, size=32, input_mode="fold", path=tmp_path / "w.safetensors")
    assert [a["name"] for a in report.adapted] == ["conv1.0.weight"] and spec.channels == 1
    gray, offset = fold_weights(source["conv1.0.weight"], spec.backbone_mean, spec.backbone_std)
    assert torch.allclose(model.backbone.conv1[0].weight, gray) and torch.allclose(
        model.backbone.conv1[0].offset, offset
    )


def test_rgb_kernel_into_one_channel_model_is_summed():
    source = _source_model()
    one_channel = timm.create_model("resnet10t", num_classes=5, in_chans=1)
    report = transfer_weights(one_channel, source, first_conv=find_first_conv(one_channel)[0])
    assert [a["name"] for a in report.adapted] == ["conv1.0.weight"] and "3→1" in report.adapted[0]["how"]
    assert torch.allclose(one_channel.state_dict()["conv1.0.weight"], source["conv1.0.weight"].sum(dim=1, keepdim=True))


def test_pickled_code_is_never_executed(tmp_path, capsys):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"conv1.weight": Evil()}))
    with pytest.raises(GraftError, match="cannot read weights"):
        read_state_dict(path)
    assert "pwned" not in capsys.readouterr().out


def test_non_tensor_files_are_refused(tmp_path):
    torch.save({"a": 1}, tmp_path / "x.pth")
    with pytest.raises(GraftError, match="state dict of tensors"):
        read_state_dict(tmp_path / "x.pth")
    with pytest.raises(GraftError, match="not found"):
        read_state_dict(tmp_path / "missing.safetensors")


def test_bundle_directory_as_weights(tmp_path):
    from graft.bundle import Bundle

    torch.manual_seed(1)
    model, arch, spec, _ = create_model("resnet10t", 3, size=32)
    Bundle(model, arch, spec, ["a", "b", "c"]).save(tmp_path / "b")
    fresh, _, _, report = _seeded("resnet10t", 3, size=32, path=tmp_path / "b")
    assert not report.skipped and not report.initialised
    assert torch.equal(fresh.backbone.fc.weight, model.backbone.fc.weight)


def test_fold_bundle_seeds_a_fold_model_and_nothing_else(tmp_path):
    from graft.bundle import Bundle

    torch.manual_seed(2)
    model, arch, spec, _ = create_model("resnet10t", 3, size=32, input_mode="fold")
    Bundle(model, arch, spec, ["a", "b", "c"]).save(tmp_path / "fold")
    again, _, _, report = _seeded("resnet10t", 3, size=32, input_mode="fold", path=tmp_path / "fold")
    assert not report.skipped and not report.initialised and not report.adapted
    for key, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key
    with pytest.raises(GraftError, match="input mode 'fold'"):
        _seeded("resnet10t", 3, size=32, input_mode="replicate", path=tmp_path / "fold")


def test_pretrained_and_weights_together_are_refused(tmp_path):
    from graft.training.config import TrainConfig
    from graft.training.start import weights_origin

    with pytest.raises(GraftError, match="not both"):
        weights_origin(TrainConfig(pretrained="imagenet", weights=str(tmp_path / "w.safetensors")))


def test_a_bundle_as_weights_keeps_its_normalisation(tmp_path):
    """A bundle seeding a new model: the fold uses the mean/std the bundle records, not timm's for the name."""
    import json

    from graft.bundle import Bundle

    torch.manual_seed(3)
    model, arch, spec, _ = create_model("resnet10t", 3, size=32)
    Bundle(model, arch, spec, ["a", "b", "c"]).save(tmp_path / "b")
    meta = json.loads((tmp_path / "b" / "graft.json").read_text())
    meta["input"]["backbone_mean"], meta["input"]["backbone_std"] = [0.5, 0.5, 0.5], [0.25, 0.5, 1.0]
    (tmp_path / "b" / "graft.json").write_text(json.dumps(meta))
    folded, _, again, _ = _seeded("resnet10t", 3, size=32, input_mode="fold", path=tmp_path / "b")
    assert again.backbone_mean == (0.5, 0.5, 0.5) and again.backbone_std == (0.25, 0.5, 1.0)
    gray, _ = fold_weights(model.backbone.conv1[0].weight, (0.5, 0.5, 0.5), (0.25, 0.5, 1.0))
    assert torch.allclose(folded.backbone.conv1[0].weight, gray)
