"""graft export --format ort and --int8: files ONNX Runtime loads, certificates that are measured, and a server that
uses int8 only within its tolerance."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import torch

import graft
from cli_helpers import run_cli as run
from graft import record as bundle_record
from graft.exports import usable_export
from graft.exports.certificate import certify, open_session, runner
from graft.exports.evidence import bundle_splits, sample
from graft.serve.engines import int8_verdict, open_engine
from graft.serve.settings import ServeSettings

FAST = {"timing_runs": 2}
LENIENT = ServeSettings(int8_min_agreement=0.0, int8_max_accuracy_drop=100.0, int8_min_images=1)


@pytest.fixture(scope="module")
def exported(serve_bundle, tmp_path_factory):
    """A copy of the tiny digits bundle (float ONNX already exported) with ORT and int8 ONNX exports."""
    path = tmp_path_factory.mktemp("int8") / "digits"
    shutil.copytree(serve_bundle, path)
    graft.export(path, format="ort", **FAST)
    graft.export(path, format="onnx", int8=True, **FAST)
    return path


@pytest.fixture
def copy(exported, tmp_path):
    path = tmp_path / "b"
    shutil.copytree(exported, path)
    return path


def _test_inputs(bundle_dir):
    """Every test image of the digits bundle, preprocessed by graft's one path, with labels in model order."""
    bundle = graft.load(bundle_dir)
    splits, _ = bundle_splits(bundle)
    chosen = sample(splits.test, bundle.classes, 10**6, 0, "test")
    return bundle, np.concatenate([batch.numpy() for batch in chosen.inputs(bundle.spec)]), chosen.labels


def test_ort_file_loads_in_onnx_runtime_and_matches_the_float_onnx(exported):
    record = bundle_record.read(exported).export("ort")[0]
    assert record is not None and record.format == "ort" and record.file == "model.ort" and record.passed
    assert (exported / "model.ort").read_bytes()[4:8] == b"ORTM"  # the ORT flatbuffer's file identifier
    _, inputs, _ = _test_inputs(exported)
    ort = runner(open_session(str(exported / "model.ort")))(inputs)
    onnx = runner(open_session(str(exported / "model.onnx")))(inputs)
    assert np.abs(onnx[: len(onnx) // 2] - onnx[len(onnx) // 2 : 2 * (len(onnx) // 2)]).max() > 0.1  # input matters
    assert np.abs(ort - onnx).max() < 1e-4 and (ort.argmax(1) == onnx.argmax(1)).all()
    path, reason, _ = usable_export(exported, "ort")
    assert path == exported / "model.ort" and "ORT export checked against PyTorch" in reason


def test_int8_certificate_is_measured_on_the_test_images(exported):
    record = bundle_record.read(exported).export("onnx-int8")[0]
    assert record is not None and record.int8 and record.tolerance is None and record.passed
    q, c = record.quantisation, record.certificate
    assert q is not None and q.format == "QDQ" and q.per_channel and q.calibration_images == 256
    assert c is not None and c.data == "digits" and c.split == "test"
    bundle, inputs, labels = _test_inputs(exported)
    assert c.images == len(labels) > 200  # fewer test images than the 1000 limit: all of them
    # Agreement and accuracies recomputed here, independently, from the int8 file on the same images.
    int8 = runner(open_session(str(exported / record.file)))(inputs)
    reference = bundle.logits(torch.from_numpy(inputs)).numpy()
    assert c.top1_agreement == pytest.approx(float((int8.argmax(1) == reference.argmax(1)).mean()))
    assert c.accuracy == pytest.approx(float((int8.argmax(1) == labels).mean()))
    assert c.float_accuracy == pytest.approx(float((reference.argmax(1) == labels).mean()))
    assert c.max_abs_logit_delta == pytest.approx(float(np.abs(int8.astype(np.float64) - reference).max()), rel=1e-5)
    assert c.max_abs_logit_delta > 0 and c.size_bytes == (exported / record.file).stat().st_size
    assert c.float_size_bytes == (exported / "model.onnx").stat().st_size > c.size_bytes
    assert c.latency_ms > 0 and c.throughput_per_s > 0 and c.float_throughput_per_s > 0


def test_a_different_model_gets_a_low_agreement(exported, tmp_path):
    """The certificate compares: another model's file is not certified as agreeing (nothing is assumed)."""
    bundle = graft.load(exported)
    splits, source = bundle_splits(bundle)
    chosen = sample(splits.test, bundle.classes, 300, 0, "test")
    other = graft.load(exported)
    with torch.no_grad():
        for parameter in other.model.parameters():
            parameter.copy_(parameter.flip(0) if parameter.dim() else parameter)
    other.save(tmp_path / "other")
    graft.export(other, certify_images=0)
    wrong = certify((tmp_path / "other" / "model.onnx").read_bytes(), bundle.logits, chosen, bundle.spec, source)
    right = certify((exported / "model.onnx").read_bytes(), bundle.logits, chosen, bundle.spec, source)
    assert right.top1_agreement == 1.0 and right.max_abs_logit_delta < 1e-4
    assert wrong.top1_agreement < 0.5 and wrong.max_abs_logit_delta > 0.1


def test_auto_uses_int8_within_tolerance_and_refuses_it_outside(exported, caplog):
    bundle = graft.load(exported)
    _, name, note = open_engine(bundle, "auto", settings=LENIENT)
    assert name == "onnx-int8" and "int8 ONNX export within tolerance" in note
    record = bundle_record.read(exported).export("onnx-int8")[0]
    assert record is not None and record.certificate is not None
    images = record.certificate.images
    strict = ServeSettings(int8_min_images=images + 1)  # a deliberately bad tolerance: more images than measured
    with caplog.at_level(logging.WARNING, logger="graft.serve"):
        _, name, note = open_engine(bundle, "auto", settings=strict)
    assert name == "onnx" and f"measured {images} test images, fewer than --int8-min-images {images + 1}" in note
    assert "not using the int8 export" in caplog.text
    with pytest.raises(graft.GraftError, match="--engine int8: not using the int8 export"):
        open_engine(bundle, "int8", settings=strict)
    assert open_engine(bundle, "onnx", settings=LENIENT)[1] == "onnx"  # onnx means the float export


def test_int8_verdict_judges_agreement_and_accuracy_drop(exported):
    record = bundle_record.read(exported).export("onnx-int8")[0]
    assert record is not None and record.certificate is not None
    c = record.certificate
    assert int8_verdict(record, LENIENT) is None
    worse = record.model_copy(update={"certificate": c.model_copy(update={"top1_agreement": 0.9})})
    assert "top-1 agreement with the float model, 90.00%" in int8_verdict(worse, ServeSettings(int8_min_images=1))
    dropped = record.model_copy(
        update={"certificate": c.model_copy(update={"top1_agreement": 1.0, "accuracy_drop": 0.02})}
    )
    assert "accuracy drop, 2.00 points" in int8_verdict(dropped, ServeSettings(int8_min_images=1))
    assert int8_verdict(dropped, ServeSettings(int8_min_images=1, int8_max_accuracy_drop=2.5)) is None
    for bad in ({"int8_min_agreement": 1.5}, {"int8_max_accuracy_drop": float("nan")}, {"int8_min_images": 0}):
        with pytest.raises(graft.GraftError, match="--int8-"):
            ServeSettings(**bad).validate()
    bare = record.model_copy(update={"certificate": None, "certificate_note": "not measured: test"})
    assert "no certificate (not measured: test)" in int8_verdict(bare, LENIENT)


def test_server_says_why_it_passes_over_int8(copy):
    from safetensors.torch import load_file, save_file

    from graft.serve.app import create_app

    app = create_app(copy, int8_min_agreement=1.0, int8_max_accuracy_drop=0.0, int8_min_images=10**6)
    loaded = app.state.holder.current
    assert loaded.engine_name == "onnx" and "fewer than --int8-min-images 1000000" in loaded.engine_note
    weights = copy / "model.safetensors"
    state = load_file(str(weights))
    save_file({k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()}, str(weights))
    _, name, note = open_engine(graft.load(copy), "auto", settings=LENIENT)
    assert name == "torch" and "the int8 ONNX export is stale" in note


def test_cli_prints_the_certificate_and_json(copy, capsys):
    code, out, err = run(
        ["export", str(copy), "--format", "ort", "--int8", "--json", "--certify-images", "300"], capsys
    )
    assert code == 0, err
    data = json.loads(out)
    assert data["file"] == "model.int8.ort" and data["int8"] and data["format"] == "ort"
    assert data["certificate"]["images"] == 300 and "stratified sample (seed 0)" in data["certificate"]["sample"]
    assert "certificate on 300 digits test images: top-1 agreement" in err and "float ONNX" in err
    assert runner(open_session(str(copy / "model.int8.ort")))(np.zeros((2, 1, 16, 16), np.float32)).shape == (2, 10)
    code, out, _ = run(["info", str(copy)], capsys)
    lines = [line for line in out.splitlines() if "model.int8" in line or "certificate" in line]
    assert code == 0 and any("model.int8.onnx" in line and "--int8-* tolerance" in line for line in lines)
    assert any("model.int8.ort" in line and "checked and current" in line for line in lines)
    assert sum("certificate on" in line for line in lines) == 4  # onnx, ort, onnx-int8, ort-int8


def test_bundles_that_cannot_be_quantised_are_refused_in_one_line(copy, capsys):
    def forget_data(old):
        return old.model_copy(update={"provenance": old.provenance.updated(data=None)})

    bundle_record.update(copy, forget_data)
    before = (copy / "graft.json").read_bytes()
    (copy / "model.int8.onnx").unlink()
    code, _, err = run(["export", str(copy), "--int8"], capsys)
    assert code == 2 and "cannot quantise to int8 without the bundle's images: this bundle does not record" in err
    assert "Traceback" not in err and [line for line in err.splitlines() if "int8" in line][-1].endswith("--data")
    assert (copy / "graft.json").read_bytes() == before and not (copy / "model.int8.onnx").exists()
    code, _, err = run(["export", str(copy), "--int8", "--certify-images", "0"], capsys)
    assert code == 2 and "an int8 export is used only on its certificate" in err
    code, _, err = run(["export", str(copy), "--int8", "--data", "folder:" + str(copy)], capsys)
    assert code == 2 and "cannot quantise to int8 without the bundle's images" in err
    # a float export goes on without images: no certificate, and the record says why
    record = graft.export(copy, format="onnx", **FAST)
    assert record.passed and record.certificate is None and "does not record the data" in record.certificate_note


def test_export_records_round_trip_and_refuse_nonsense(exported):
    read = bundle_record.read(exported)
    for name in ("onnx", "ort", "onnx-int8"):
        record, problem = read.export(name)
        assert problem is None and record is not None
        assert bundle_record.export_record({name: json.loads(json.dumps(record.to_dict()))}, name)[0] == record
    again = bundle_record.make_record(
        read.arch, read.spec, read.classes, exports=read.exports, provenance=read.provenance, metrics=read.metrics
    )
    assert again.exports == read.exports
    int8 = read.exports["onnx-int8"]
    assert (
        "int8 export records its quantisation"
        in bundle_record.export_record({"x": {**int8, "quantisation": None}}, "x")[1]
    )
    assert (
        "tolerance of its parity check"
        in bundle_record.export_record({"x": {**read.exports["onnx"], "tolerance": None}}, "x")[1]
    )
    bad = {**int8, "certificate": {**int8["certificate"], "top1_agreement": 1.5}}
    assert "certificate.top1_agreement" in bundle_record.export_record({"x": bad}, "x")[1]
    swapped = graft.load(exported)
    swapped.exports = {"onnx-int8": read.exports["onnx"]}  # a float record under the int8 name is not int8
    assert usable_export(swapped, "onnx-int8")[0] is None
    assert "another kind of export" in usable_export(swapped, "onnx-int8")[1]


def _weights_of_convs(model_bytes: bytes) -> list[str]:
    """For each Conv node in order: 'float' when its weight is a float initializer, 'int8' when it is dequantised."""
    import onnx

    graph = onnx.load_from_string(model_bytes).graph
    dequantised = {output for node in graph.node if node.op_type == "DequantizeLinear" for output in node.output}
    return ["int8" if node.input[1] in dequantised else "float" for node in graph.node if node.op_type == "Conv"]


def test_keep_float_leaves_the_first_conv_and_its_offset_float_and_quantises_the_rest(exported):
    from graft.exports.quantise import quantise

    q = bundle_record.read(exported).export("onnx-int8")[0].quantisation
    assert q is not None and q.keep_float == ["first-conv"] and q.calibration_method == "MinMax"
    kinds = _weights_of_convs((exported / "model.int8.onnx").read_bytes())
    assert kinds[0] == "float" and set(kinds[1:]) == {"int8"} and len(kinds) > 5
    # A fold model's first conv is followed by its spatial offset (Add); both are named as float nodes.
    assert len(q.float_nodes) >= 2 and "Conv" in q.float_nodes[0]
    _, inputs, _ = _test_inputs(exported)
    float_onnx = (exported / "model.onnx").read_bytes()
    whole, none_kept = quantise(float_onnx, [inputs[:64]], "input", keep_float=())
    assert none_kept == [] and set(_weights_of_convs(whole)) == {"int8"}
    both, kept = quantise(float_onnx, [inputs[:64]], "input", keep_float=("first-conv", "last-linear"))
    assert kept[: len(q.float_nodes)] == q.float_nodes and len(kept) == len(q.float_nodes) + 1
    import onnx

    last = [node for node in onnx.load_from_string(both).graph.node if node.op_type in ("Gemm", "MatMul")][-1]
    assert last.name == kept[-1] and not any(
        node.op_type == "DequantizeLinear" and last.input[1] in node.output
        for node in onnx.load_from_string(both).graph.node
    )


def test_calibration_method_changes_the_ranges_and_is_recorded(copy):
    from graft.exports.quantise import quantise

    _, inputs, _ = _test_inputs(copy)
    float_onnx = (copy / "model.onnx").read_bytes()
    minmax, _ = quantise(float_onnx, [inputs[:128]], "input", method="MinMax")
    again, _ = quantise(float_onnx, [inputs[:128]], "input", method="minmax")
    percentile, _ = quantise(float_onnx, [inputs[:128]], "input", method="Percentile")
    assert minmax == again and percentile != minmax  # deterministic, and the method matters
    record = graft.export(copy, int8=True, calibration_method="percentile", keep_float=["none"], **FAST)
    q = record.quantisation
    assert q is not None and q.calibration_method == "Percentile" and q.keep_float == [] and q.float_nodes == []
    assert record.certificate is not None and record.certificate.images > 200


def test_unknown_int8_choices_are_refused_in_one_line_before_anything_is_written(copy, capsys):
    before = (copy / "graft.json").read_bytes()
    (copy / "model.int8.onnx").unlink()
    for flags, message in (
        (["--keep-float", "first-conv,stem"], "--keep-float 'first-conv,stem': unknown layer 'stem'"),
        (["--calibration-method", "kl"], "unknown calibration method 'kl'; choose MinMax, Percentile, Entropy"),
    ):
        code, _, err = run(["export", str(copy), "--int8", *flags], capsys)
        assert code == 2 and message in err and "Traceback" not in err
    assert (copy / "graft.json").read_bytes() == before and not (copy / "model.int8.onnx").exists()


def test_certificates_and_the_server_open_sessions_without_qdq_propagation(tmp_path, monkeypatch):
    """What is certified is what is served: both open ONNX Runtime sessions with the same passes left out (QDQ
    propagation made an int8 model's max-pool run on uint8, 6× the float pool's time)."""
    import onnxruntime

    from graft.exports import certificate
    from graft.serve import engines

    seen: list[list[str]] = []

    class Recorder:
        def __init__(self, *_args, disabled_optimizers=(), **_kwargs):
            seen.append(list(disabled_optimizers))

        def get_inputs(self):
            return [type("Port", (), {"name": "x"})()]

        get_outputs = get_inputs

    monkeypatch.setattr(onnxruntime, "InferenceSession", Recorder)
    certificate.open_session(b"model")
    engines.onnx_engine(tmp_path / "model.onnx")
    assert seen == [["QDQPropagationTransformer"], ["QDQPropagationTransformer"]]
