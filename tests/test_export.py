"""graft export: model.onnx written atomically with its parity record; stale or failed exports are not served."""

from __future__ import annotations

import json
import logging
import shutil

import pytest

import graft
from cli_helpers import run_cli as run
from graft.exports import onnx_export, read_exports
from graft.serve.engines import open_engine


@pytest.fixture
def bundle_copy(serve_bundle, tmp_path):
    path = tmp_path / "b"
    shutil.copytree(serve_bundle, path)
    return path


def test_export_records_parity_and_is_used(serve_bundle):
    record = read_exports(serve_bundle)["onnx"]
    assert (serve_bundle / "model.onnx").is_file() and record["file"] == "model.onnx"
    assert record["passed"] is True and 0 <= record["max_abs_logit_delta"] <= 1e-4 == record["tolerance"]
    assert record["opset"] >= 18 and record["onnxruntime_version"] and record["created"]
    assert len(record["weights_sha256"]) == len(record["sha256"]) == 64
    path, reason = onnx_export(serve_bundle)
    assert path == serve_bundle / "model.onnx" and "checked against PyTorch" in reason
    _, name, _ = open_engine(graft.load(serve_bundle), "auto")
    assert name == "onnx"
    # the bundle still loads and predicts as before: the record is an addition to graft.json
    assert graft.load(serve_bundle).classes == [str(i) for i in range(10)]


def test_info_shows_the_export(serve_bundle, capsys):
    code, out, _ = run(["info", str(serve_bundle)], capsys)
    line = next(line for line in out.splitlines() if line.startswith("export"))
    assert code == 0 and "model.onnx opset" in line and "used by graft serve" in line
    code, out, _ = run(["info", str(serve_bundle), "--json"], capsys)
    assert json.loads(out)["exports"]["onnx"]["passed"] is True


def test_changed_weights_make_the_export_stale(bundle_copy, caplog, capsys):
    from safetensors.torch import load_file, save_file

    weights = bundle_copy / "model.safetensors"
    state = load_file(str(weights))
    save_file({k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()}, str(weights))  # new weights
    path, reason = onnx_export(bundle_copy)
    assert path is None and "stale" in reason
    with caplog.at_level(logging.WARNING, logger="graft.serve"):
        _, name, note = open_engine(graft.load(bundle_copy), "auto")
    assert name == "torch" and "stale" in note and "stale" in caplog.text
    with pytest.raises(graft.GraftError, match="--engine onnx: the ONNX export is stale"):
        open_engine(graft.load(bundle_copy), "onnx")
    code, out, _ = run(["info", str(bundle_copy)], capsys)
    assert code == 0 and "not used by graft serve: the ONNX export is stale" in out


def test_tampered_or_missing_onnx_file_is_not_used(bundle_copy):
    (bundle_copy / "model.onnx").write_bytes(b"not the exported model")
    assert "does not match its export record" in onnx_export(bundle_copy)[1]
    (bundle_copy / "model.onnx").unlink()
    assert "missing" in onnx_export(bundle_copy)[1]


def test_failed_parity_is_recorded_and_reported(bundle_copy, capsys):
    code, _, err = run(["export", str(bundle_copy), "--tolerance", "1e-30"], capsys)
    assert code == 2 and "differs from PyTorch" in err and "keep using PyTorch" in err
    record = read_exports(bundle_copy)["onnx"]
    assert record["passed"] is False and record["tolerance"] == 1e-30
    path, reason = onnx_export(bundle_copy)
    assert path is None and "failed its parity check" in reason
    record = graft.export(bundle_copy, format="onnx")  # the Python API, with the default tolerance
    assert record.passed and read_exports(bundle_copy)["onnx"] == record.to_dict()
    assert onnx_export(bundle_copy)[0] == bundle_copy / "model.onnx"


def test_export_errors_write_nothing(bundle_copy, monkeypatch, capsys):
    before = (bundle_copy / "graft.json").read_bytes()
    (bundle_copy / "model.onnx").unlink()
    code, _, err = run(["export", str(bundle_copy), "--format", "tflite"], capsys)
    assert code == 2 and "unknown export format 'tflite'" in err
    import graft.exports as exports

    def cannot(*_args, **_kwargs):
        raise graft.GraftError("this model cannot be exported to ONNX: test")

    monkeypatch.setattr(exports, "_to_onnx", cannot)
    code, _, err = run(["export", str(bundle_copy)], capsys)
    assert code == 2 and "cannot be exported" in err
    assert (bundle_copy / "graft.json").read_bytes() == before and not (bundle_copy / "model.onnx").exists()
    assert sorted(p.name for p in bundle_copy.iterdir()) == ["graft.json", "model.safetensors"]
    code, _, err = run(["export", str(bundle_copy.parent / "missing")], capsys)
    assert code == 2 and "not a bundle directory" in err

    unsaved = graft.load(bundle_copy)
    unsaved.path = None
    with pytest.raises(graft.GraftError, match="only a saved bundle"):
        graft.export(unsaved)
