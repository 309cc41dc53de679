"""The bundle record (`graft.json`): one reader, one-line refusals for damaged records, migration, schema."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from graft import record
from graft.errors import GraftError
from graft.spec import IMAGENET_MEAN, IMAGENET_STD

ROOT = Path(__file__).resolve().parents[1]


def _good() -> dict:
    return {
        "format": "graft.bundle",
        "version": 2,
        "architecture": {"timm_name": "resnet10t", "num_classes": 3, "head": "pool", "timm_kwargs": {}, "edits": []},
        "input": {
            "size": [32, 32],
            "channels": 1,
            "mode": "fold",
            "mean": [0.0],
            "std": [1.0],
            "interpolation": "bilinear",
            "antialias": True,
            "resize": "stretch",
            "backbone_mean": list(IMAGENET_MEAN),
            "backbone_std": list(IMAGENET_STD),
        },
        "classes": ["a", "b", "c"],
        "parameters": 10,
        "metrics": {"test_acc": 0.9},
        "provenance": {"data": {"source": "digits", "valid_fraction": 0.25, "split_seed": 3}, "surgery": []},
    }


def _write(tmp_path: Path, data: object) -> Path:
    (tmp_path / record.META_FILE).write_text(json.dumps(data))
    return tmp_path


def test_a_good_record_reads_as_typed_values(tmp_path):
    read = record.read(_write(tmp_path, _good()))
    assert read.arch.timm_name == "resnet10t" and read.arch.kind == "timm"
    assert read.spec.mode == "fold" and read.spec.size == (32, 32)
    assert read.provenance.data.valid_fraction == 0.25 and read.provenance.data.split_seed == 3
    assert read.classes == ["a", "b", "c"]


def _damaged(change) -> dict:
    data = _good()
    change(data)
    return data


DAMAGED = {
    "edits as a string": (lambda d: d["architecture"].update(edits="abc"), "architecture.edits"),
    "timm_name as a number": (lambda d: d["architecture"].update(timm_name=123), "architecture.timm_name"),
    "checkpoint in timm kwargs": (
        lambda d: d["architecture"].update(timm_kwargs={"checkpoint_path": "/etc/passwd"}),
        "checkpoint_path",
    ),
    "metrics as a list": (lambda d: d.update(metrics=[1, 2]), "metrics"),
    "provenance as a string": (lambda d: d.update(provenance="x"), "provenance"),
    "classes as a string": (lambda d: d.update(classes="abc"), "classes"),
    "an unknown head": (lambda d: d["architecture"].update(head="bogus"), "architecture.head"),
    "channels as a string": (lambda d: d["input"].update(channels="1"), "input.channels"),
    "too few classes": (lambda d: d.update(classes=["a", "b"]), "2 class names for a 3-class model"),
    "repeated classes": (lambda d: d.update(classes=["a", "a", "b"]), "class names repeat"),
    "mean of the wrong length": (lambda d: d["input"].update(mean=[0.0, 0.0]), "mean/std"),
    "an unknown edit": (lambda d: d["architecture"].update(edits=[{"op": "melt"}]), "architecture.edits"),
    "a valid fraction of 2": (lambda d: d["provenance"]["data"].update(valid_fraction=2), "valid_fraction"),
    "an unknown top-level key": (lambda d: d.update(extra=1), "extra"),
}


@pytest.mark.parametrize("case", sorted(DAMAGED))
def test_damaged_records_are_one_line_errors_naming_the_field(tmp_path, case):
    change, expected = DAMAGED[case]
    with pytest.raises(GraftError) as error:
        record.read(_write(tmp_path, _damaged(change)))
    message = str(error.value)
    assert "\n" not in message and "damaged" in message and expected in message, message


def test_not_json_not_a_bundle_and_newer_versions_are_refused(tmp_path):
    (tmp_path / record.META_FILE).write_text("{nope")
    with pytest.raises(GraftError, match="not JSON"):
        record.read(tmp_path)
    with pytest.raises(GraftError, match="not a graft bundle description"):
        record.read(_write(tmp_path, [1, 2]))
    with pytest.raises(GraftError, match="newer than this graft reads"):
        record.read(_write(tmp_path, {**_good(), "version": 99}))
    with pytest.raises(GraftError, match="is missing"):
        record.read(tmp_path / "nowhere")


def test_version_1_migrates_and_its_two_input_modes_must_agree(tmp_path):
    old = _good()
    old["version"] = 1
    old["architecture"]["input_mode"] = "fold"
    migrated = record.read(_write(tmp_path, old))
    assert migrated.version == 2 and migrated.spec.mode == "fold"
    assert "input_mode" not in migrated.to_json()["architecture"]
    old["architecture"]["input_mode"] = "replicate"
    with pytest.raises(GraftError, match=r"input_mode 'replicate' and input\.mode 'fold' differ"):
        record.read(_write(tmp_path, old))


def test_update_validates_before_replacing_and_keeps_the_old_file_on_error(tmp_path):
    _write(tmp_path, _good())
    before = (tmp_path / record.META_FILE).read_bytes()
    with pytest.raises(GraftError, match="after the change"):
        record.update(tmp_path, lambda r: r.model_copy(update={"classes": ["only one"]}))
    assert (tmp_path / record.META_FILE).read_bytes() == before
    record.update(tmp_path, lambda r: r.model_copy(update={"metrics": {"test_acc": 0.5}}))
    assert record.read(tmp_path).metrics == {"test_acc": 0.5}


def test_a_damaged_export_record_disables_the_export_not_the_bundle(tmp_path):
    data = {**_good(), "exports": {"onnx": {"file": "model.onnx", "max_abs_logit_delta": "0.0"}}}
    read = record.read(_write(tmp_path, data))
    export, problem = read.export("onnx")
    assert export is None and "damaged" in problem and "\n" not in problem


def test_unknown_provenance_keys_survive_a_round_trip(tmp_path):
    data = _good()
    data["provenance"]["rounds_note"] = {"from": "another tool"}
    read = record.read(_write(tmp_path, data))
    assert read.to_json()["provenance"]["rounds_note"] == {"from": "another tool"}


def test_the_published_schema_is_current():
    published = json.loads((ROOT / "docs" / "bundle.schema.json").read_text())
    assert published == record.json_schema(), "regenerate it: uv run graft schema > docs/bundle.schema.json"


def test_the_record_module_imports_no_torch():
    code = (
        "import sys, importlib.util, pathlib\n"
        "sys.modules.pop('torch', None)\n"
        "import graft.record\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr


def test_imagenet_constants_match_timms():
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    assert IMAGENET_MEAN == IMAGENET_DEFAULT_MEAN and IMAGENET_STD == IMAGENET_DEFAULT_STD


def test_graft_schema_prints_the_schema(capsys):
    from cli_helpers import run_cli

    code, out, _ = run_cli(["schema"], capsys)
    assert code == 0 and json.loads(out) == record.json_schema()
