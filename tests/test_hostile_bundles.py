"""Damaged and hostile bundles, runs and flags: one line and exit 2 (or a clear refusal), never a traceback, a
wrongly loaded model, invalid JSON or a silently replaced file (issue 14 items 3, 4, 12, 13, 14, 15)."""

from __future__ import annotations

import copy
import json
import os
import resource
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import load_file, save_file

import graft
from cli_helpers import run_cli
from graft.bundle import Bundle, load
from graft.errors import GraftError
from graft.models.factory import create_model
from graft.record import export_record

CLASSES = ["a", "b", "c", "d"]


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny bundle whose logits depend on its input (checked), saved once for the module."""
    torch.manual_seed(0)
    model, arch, spec, _ = create_model("resnet10t", 4, input_mode="fold", size=16)
    bundle = Bundle(model.eval(), arch, spec, CLASSES, {"test_acc": 0.5})
    a, b = (torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(s)) for s in (1, 2))
    assert (bundle.logits(a) - bundle.logits(b)).abs().max() > 1e-3
    return bundle.save(tmp_path_factory.mktemp("good") / "bundle")


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("img") / "digit.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 20), np.uint8)).save(path)
    return path


def copy_with(good: Path, where: Path, record: dict | None = None, weights: dict | None = None) -> Path:
    where.mkdir(parents=True)
    if weights is None:
        os.symlink(good / "model.safetensors", where / "model.safetensors")
    else:
        save_file(weights, str(where / "model.safetensors"))
    text = (good / "graft.json").read_text() if record is None else json.dumps(record)
    (where / "graft.json").write_text(text)
    return where


def one_error_line(code: int, out: str, err: str) -> str:
    assert code == 2, (code, out, err)
    lines = [line for line in (out + err).splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, lines
    return lines[0]


# ---- weights that do not fit, or hold NaN -----------------------------------------------------------------------


def test_wrong_shape_weights_name_the_tensor(good: Path, tmp_path: Path) -> None:
    state = load_file(str(good / "model.safetensors"))
    name = next(k for k, v in state.items() if v.ndim == 4)
    state[name] = torch.zeros(*state[name].shape[:-1], state[name].shape[-1] + 1)
    bundle = copy_with(good, tmp_path / "b", weights=state)
    with pytest.raises(GraftError) as caught:
        load(bundle)
    assert name in str(caught.value) and "in the file but" in str(caught.value)


def test_a_record_claiming_a_huge_model_is_refused_before_allocating(good: Path, tmp_path: Path) -> None:
    record = json.loads((good / "graft.json").read_text())
    record["architecture"]["edits"] = [{"op": "widen", "layer": "layer1.0.conv1", "width": 65536}]
    bundle = copy_with(good, tmp_path / "b", record)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with pytest.raises(GraftError, match="does not fit"):
        load(bundle)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before < 500


def test_nan_weights_are_refused_at_load(good: Path, tmp_path: Path) -> None:
    state = load_file(str(good / "model.safetensors"))
    name = next(k for k, v in state.items() if v.is_floating_point() and v.ndim == 4)
    state[name][0, 0, 0, 0] = float("nan")
    with pytest.raises(GraftError, match=f"NaN or infinite weights \\({name}"):
        load(copy_with(good, tmp_path / "b", weights=state))


def test_non_finite_scores_are_refused_and_json_stays_strict(good: Path, photo: Path, capsys) -> None:
    bundle = load(good)
    with pytest.raises(GraftError, match="non-finite scores"):
        bundle.rank(torch.tensor([[0.0, float("nan"), 1.0, 2.0]]))
    code, out, _ = run_cli(["info", str(good), "--json"], capsys)
    assert code == 0
    json.loads(out, parse_constant=lambda c: pytest.fail(f"invalid JSON constant {c}"))
    assert (
        graft.io.json_text({"loss": float("nan"), "x": [float("inf")]})
        == '{\n  "loss": null,\n  "x": [\n    null\n  ]\n}'
    )


# ---- the record: hostile kwargs, export files, sizes ----------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"timm_kwargs": {"checkpoint_path": "/etc/passwd"}}, "'checkpoint_path' is not a timm option"),
        ({"timm_kwargs": {"pretrained_cfg_overlay": {"file": "/x"}}}, "is not a timm option"),
        ({"timm_kwargs": {"drop_rate": {"nested": 1}}}, "must be a plain number"),
        ({"num_classes": 10**9}, "less than or equal to 100000"),
    ],
)
def test_record_refuses_hostile_architecture(good: Path, tmp_path: Path, change: dict, message: str) -> None:
    record = json.loads((good / "graft.json").read_text())
    record["architecture"].update(change)
    with pytest.raises(GraftError, match=message):
        load(copy_with(good, tmp_path / "b", record))


def test_recipe_model_kwargs_are_held_to_the_same_allow_list(tmp_path: Path) -> None:
    with pytest.raises(GraftError, match="'checkpoint_path' is not a timm option"):
        graft.train(data="digits", model="resnet10t", model_kwargs={"checkpoint_path": "/etc/passwd"}, epochs=1)


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "..", "sub/model.onnx"])
def test_an_export_names_only_a_file_inside_the_bundle(name: str) -> None:
    exports = {"onnx": {"file": name, "sha256": "x", "weights_sha256": "y", "opset": 17, "exporter": "dynamo",
                        "torch_version": "2", "onnxruntime_version": "1", "max_abs_logit_delta": 0.0,
                        "max_abs_probability_delta": 0.0, "tolerance": 1e-4, "passed": True, "probe": "p",
                        "created": "now"}}  # fmt: skip
    record, reason = export_record(exports, "onnx")
    assert record is None and "inside the bundle" in reason
    assert export_record({"onnx": {**exports["onnx"], "file": "model.onnx"}}, "onnx")[0] is not None


def test_huge_input_size_is_a_record_error_not_a_model_error(good: Path, tmp_path: Path) -> None:
    record = json.loads((good / "graft.json").read_text())
    record["input"]["size"] = [100000, 100000]
    with pytest.raises(GraftError) as caught:
        load(copy_with(good, tmp_path / "b", record))
    assert "input.size" in str(caught.value) and "below what" not in str(caught.value)


# ---- every mutation of graft.json, through every command that reads a bundle ------------------------------------


def _paths(value: object, prefix: tuple = ()) -> list[tuple]:
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value[:3]):
            found += _paths(item, (*prefix, index))
    return found


JSON_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from([float("nan"), float("inf"), -1e308, 0.5]),
    st.text(max_size=12),
    st.sampled_from(["0123456789", "", "bogus", "../x", "resnet10t"]),
    st.lists(st.integers(-5, 10**9), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


@st.composite
def mutated_records(draw: st.DrawFn, original: dict) -> dict:
    record = copy.deepcopy(original)
    for _ in range(draw(st.integers(1, 2))):
        path = draw(st.sampled_from(_paths(record)[1:]))
        parent = record
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "delete", "extra"]))
        if action == "delete":
            del parent[path[-1]]
        elif action == "extra" and isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=6))] = draw(JSON_VALUES)
        else:
            parent[path[-1]] = draw(JSON_VALUES)
    return record


def _commands(bundle: Path, photo: Path, out: Path) -> dict[str, list[str]]:
    return {
        "info": ["info", str(bundle)],
        "predict": ["predict", str(bundle), str(photo)],
        "eval": ["eval", str(bundle), "--data", "digits", "--output", str(out / "eval")],
        "export": ["export", str(bundle), "--format", "onnx"],
        "serve": ["serve", str(bundle), "--port", "1"],
        "train": ["train", "--weights", str(bundle), "--data", "digits", "--epochs", "1", "--run-dir", str(out / "r")],
        "surgery": ["surgery", str(bundle), "-o", str(out / "s"), "--channels", "3"],
    }


def test_fuzzed_records_give_one_line_and_exit_2_in_every_command(good: Path, photo: Path, tmp_path: Path, capsys):
    original = json.loads((good / "graft.json").read_text())
    counter = iter(range(10**6))

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(mutated_records(original))
    def check(record: dict) -> None:
        where = tmp_path / f"m{next(counter)}"
        bundle = copy_with(good, where / "bundle", record)
        try:
            graft.record.read(bundle)
        except GraftError:
            damaged = True
        else:
            damaged = False
        if not damaged:  # still a valid record (an extra provenance key, another metric): it must load
            code, _, err = run_cli(["info", str(bundle)], capsys)
            assert code in (0, 2) and "Traceback" not in err
            return
        for name, args in _commands(bundle, photo, where).items():
            line = one_error_line(*run_cli(args, capsys))
            assert "graft.json" in line or "bundle" in line, (name, line)
        shutil.rmtree(where)

    check()


# ---- runs and files ---------------------------------------------------------------------------------------------


def test_bundle_files_are_readable_by_others(good: Path) -> None:
    for item in good.iterdir():
        assert stat.S_IMODE(item.stat().st_mode) == 0o644, item


def test_predict_skip_bad_and_folders(good: Path, photo: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(photo, folder / "one.png")
    shutil.copy(photo, folder / "sub" / "two.png")
    (folder / "bad.jpg").write_bytes(b"not an image")
    code, out, err = run_cli(["predict", str(good), str(photo), str(folder / "bad.jpg")], capsys)
    assert code == 2 and out == ""  # default: a bad file stops the command before any output
    code, out, err = run_cli(["predict", str(good), str(photo), str(folder / "bad.jpg"), "--skip-bad"], capsys)
    assert code == 1 and out.count(": ") == 1 and str(photo) in out and "bad.jpg" in err
    code, out, err = run_cli(["predict", str(good), str(folder), "--json"], capsys)  # a folder skips bad files
    results = json.loads(out)
    assert code == 1 and [Path(r["image"]).name for r in results] == ["bad.jpg", "one.png", "two.png"]
    assert "error" in results[0] and all("top" in r for r in results[1:])


def test_predict_limits_are_on_by_default_and_can_be_lifted(good: Path, tmp_path: Path, capsys) -> None:
    wide = tmp_path / "wide.png"
    Image.new("L", (16385, 2)).save(wide)
    code, out, err = run_cli(["predict", str(good), str(wide)], capsys)
    assert code == 2 and "side longer than the limit of 16384" in err
    code, out, _ = run_cli(["predict", str(good), str(wide), "--no-limits"], capsys)
    assert code == 0 and "wide.png" in out


def test_a_fifo_given_to_predict_is_refused(good: Path, tmp_path: Path, capsys) -> None:
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    line = one_error_line(*run_cli(["predict", str(good), str(fifo)], capsys))
    assert "not a regular file" in line


def test_a_malicious_checkpoint_gets_one_line_without_pickle_advice(tmp_path: Path, capsys) -> None:
    from graft.training.checkpoint import checkpoint_path, load_checkpoint

    run = tmp_path / "run"
    run.mkdir()

    class Payload:
        def __reduce__(self):  # what a malicious pickle would run
            return (os.system, ("echo pwned",))

    torch.save({"format": "x", "evil": Payload()}, checkpoint_path(run))
    with pytest.raises(GraftError) as caught:
        load_checkpoint(run)
    message = str(caught.value)
    assert "\n" not in message and "weights_only=False" not in message and "never runs code" in message


def test_resume_does_not_replace_a_bundle_it_did_not_write(tmp_path: Path, capsys) -> None:
    from graft.training.checkpoint import checkpoint_path

    run, output = tmp_path / "run", tmp_path / "out"
    args = ["train", "--data", "digits", "--model", "resnet10t", "--size", "16", "--epochs", "1", "--workers", "0"]
    args += ["--max-train", "200", "--run-dir", str(run), "--output", str(output)]
    code, _, err = run_cli(args, capsys)  # a finished run, then made unfinished again
    assert code == 0, err
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "epochs": 2}))
    shutil.rmtree(output)
    other = tmp_path / "other"
    assert run_cli(["train", "--data", "digits", "--model", "resnet10t", "--size", "16", "--epochs", "1",
                    "--workers", "0", "--max-train", "200", "--output", str(other),
                    "--run-dir", str(tmp_path / "run2")], capsys)[0] == 0  # fmt: skip
    shutil.copytree(other, output)  # someone else's bundle now sits at the run's --output
    checkpoint_path(run).write_bytes(b"")  # (content irrelevant: refused before it is read)
    before = (output / "model.safetensors").read_bytes()
    line = one_error_line(*run_cli(["train", "--resume", str(run)], capsys))
    assert "did not write" in line and "--force" in line
    assert (output / "model.safetensors").read_bytes() == before


def test_a_string_version_is_damaged_not_newer(good: Path, tmp_path: Path) -> None:
    record = json.loads((good / "graft.json").read_text())
    with pytest.raises(GraftError) as caught:
        load(copy_with(good, tmp_path / "b", {**record, "version": "1"}))
    assert "not a bundle version" in str(caught.value) and "newer" not in str(caught.value)
