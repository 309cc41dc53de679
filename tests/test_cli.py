"""The command line: end to end on a tiny model, and every kind of bad input → one line, exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import graft
from cli_helpers import run_cli as run


def _digit_pngs(tmp_path: Path, count: int = 6) -> list[Path]:
    """Test-split digits written as PNG files, as a user would hand them to `graft predict`."""
    from graft.data import load_splits

    test = load_splits("digits").test
    paths = []
    for i in range(count):
        path = tmp_path / f"digit{i}_{test.classes[test.labels[i]]}.png"
        Image.fromarray(test.image(i)[:, :, 0]).save(path)
        paths.append(path)
    return paths


def test_help_explains_every_command(capsys):
    for command in ([], ["train"], ["eval"], ["predict"], ["info"]):
        code, out, _ = run([*command, "--help"], capsys)
        assert code == 0 and "Usage: graft" in out
    code, out, _ = run(["train", "--help"], capsys)
    text = " ".join(out.split())
    assert "--input-mode" in text and "replicate, stem or fold" in text and "recipe" in text


def test_eval_and_predict_agree_with_training(tiny_run, tmp_path, capsys):
    bundle_dir = tiny_run.bundle.path
    code, out, _ = run(["eval", str(bundle_dir), "--json", "-o", str(tmp_path / "ev")], capsys)
    assert code == 0
    result = json.loads(out)
    assert result["accuracy"] == pytest.approx(tiny_run.bundle.metrics["test_acc"], abs=1e-9)
    assert (tmp_path / "ev" / "confusion.png").is_file() and (tmp_path / "ev" / "misclassified.png").is_file()
    assert len(result["per_class"]) == 10 and sum(r["support"] for r in result["per_class"]) == result["images"]

    images = _digit_pngs(tmp_path)
    code, out, _ = run(["predict", str(bundle_dir), *map(str, images), "--json", "-k", "2"], capsys)
    assert code == 0
    printed = json.loads(out)
    direct = graft.load(bundle_dir).predict([str(p) for p in images], top_k=2)
    for row, pred in zip(printed, direct, strict=True):
        assert [t["class"] for t in row["top"]] == pred.classes
        assert [t["probability"] for t in row["top"]] == pytest.approx(pred.probabilities, abs=1e-6)
    # The PNG path and the in-memory test images give the same logits: one preprocessing path.
    from graft.data import load_splits

    test = load_splits("digits").test
    arrays = [test.image(i) for i in range(len(images))]
    from_arrays = graft.load(bundle_dir).predict(arrays, top_k=2)
    for array_pred, file_pred in zip(from_arrays, direct, strict=True):
        assert array_pred.probabilities == pytest.approx(file_pred.probabilities, abs=1e-6)

    code, out, _ = run(["predict", str(bundle_dir), str(images[0])], capsys)
    assert code == 0 and out.startswith(str(images[0])) and "%" in out
    code, out, _ = run(["info", str(bundle_dir)], capsys)
    assert code == 0 and "resnet10t" in out and "mode=fold" in out and "test_acc" in out
    code, out, _ = run(["info", str(bundle_dir), "--json"], capsys)
    assert json.loads(out)["input"]["channels"] == 1


def test_run_directory_contents(tiny_run):
    names = {p.name for p in tiny_run.run_dir.iterdir()}
    assert {"metrics.jsonl", "curves.png", "report.html", "config.json", "confusion.png", "misclassified.png"} <= names
    lines = (tiny_run.run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert "Learning curves" in (tiny_run.run_dir / "report.html").read_text()


def _bad_image(tmp_path: Path) -> Path:
    path = tmp_path / "broken.png"
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:30])
    return path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--model", "resnet181", "--epochs", "1"], "unknown model 'resnet181'"),
        (["train", "--data", "mnsit"], "unknown data source"),
        (["train", "--data", "folder:/does/not/exist"], "/does/not/exist"),
        (["train", "--model", "densenet121", "--size", "8"], "below what densenet121 accepts; use --size 32"),
        (["train", "--weights", "/no/such/weights.safetensors"], "weights file not found"),
        (["train", "--input-mode", "magic"], "input_mode"),
        (["eval", "/no/bundle"], "not a bundle directory"),
        (["predict", "/no/bundle", "x.png"], "not a bundle directory"),
        (["info", "/no/bundle"], "not a bundle directory"),
        (["train", "--pretrained", "imagenet", "--weights", "w.safetensors"], "not both"),
        (["train", "--data", "folder:/tmp/[/red]x[bold]"], "folder:/tmp/[/red]x[bold]"),
        (["train", "--batch-size", "1"], "batch_size"),
        (["eval", "/no/bundle", "--split", "some"], "unknown split 'some'"),
        (["train", "--size", "abc"], "Invalid value for '--size'"),
        (["nosuch"], "No such command 'nosuch'"),
        (["predict", "x.png", "-k", "0"], "Invalid value for '--top-k'"),
        (["info"], "Missing argument 'bundle'"),
        (["train", "--lr", "inf"], "lr: Input should be a finite number"),
        (["train", "--seed", "-1"], "seed: Input should be greater than or equal to 0"),
        (["train", "--data", "folder:"], "folder: needs a path"),
        (["train", "--valid-fraction", "0.0001"], "the valid split is empty"),
        (["train", "--data", "mnist", "--data-root", ".", "--offline"], "downloads are off"),
        (["train", "--output", "same", "--run-dir", "same"], "cannot be the run directory"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(args, capsys)
    assert code == 2, err
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


def test_predict_refuses_non_images(tiny_run, tmp_path, capsys):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    for bad in (text, _bad_image(tmp_path), tmp_path / "missing.png"):
        code, out, err = run(["predict", str(tiny_run.bundle.path), str(bad)], capsys)
        assert code == 2 and bad.name in err and "Traceback" not in err and out == ""


def test_bad_recipe_exit_2(tmp_path, capsys):
    recipe = tmp_path / "r.toml"
    recipe.write_text("epochs = 'many'\n")
    code, _, err = run(["train", str(recipe)], capsys)
    assert code == 2 and "epochs" in err


def test_existing_bundle_is_kept_when_training_would_overwrite_it(tiny_run, capsys, tmp_path):
    bundle_dir = tiny_run.bundle.path
    before = (bundle_dir / "model.safetensors").read_bytes()
    code, _, err = run(["train", "--output", str(bundle_dir), "--run-dir", str(tmp_path / "r")], capsys)
    assert code == 2 and "already exists" in err
    assert (bundle_dir / "model.safetensors").read_bytes() == before


def test_os_errors_are_one_line(tiny_run, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code, _, err = run(["eval", str(tiny_run.bundle.path), "-o", str(blocker / "sub")], capsys)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_real_process_exit_code_and_no_traceback(tmp_path):
    """The installed entry point, as a user runs it."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-m", "graft", "train", "--data", "nope"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("graft: error: unknown data source 'nope'")
    assert "Traceback" not in proc.stderr


def test_force_never_deletes_a_folder_that_is_not_a_bundle(tmp_path, capsys):
    precious = tmp_path / "thesis"
    precious.mkdir()
    (precious / "chapter1.txt").write_text("years of work")
    code, _, err = run(["train", "--output", str(precious), "--force", "--run-dir", str(tmp_path / "r")], capsys)
    assert code == 2 and "not a graft bundle" in err
    assert (precious / "chapter1.txt").read_text() == "years of work"


def test_eval_rebuilds_the_valid_split_of_a_seeded_run(tmp_path):
    """The valid split depends on the training seed; eval must rebuild the same one from the provenance."""
    result = graft.train(
        data="digits", model="resnet10t", size=16, epochs=1, seed=3, resize="crop", run_dir=str(tmp_path / "r")
    )
    assert result.bundle.spec.resize == "crop"
    assert graft.load(result.bundle.path).spec.resize == "crop"
    again = graft.evaluate(result.bundle.path, split="valid")
    assert again.accuracy == result.bundle.metrics["valid_acc"]
    assert len(again.labels) == result.bundle.provenance.data.valid


def test_force_rerun_without_weights_drops_the_old_transfer_report(tmp_path):
    from safetensors.torch import save_file

    from graft.models import create_model

    model, *_ = create_model("resnet10t", 10, size=16)
    save_file(model.backbone.state_dict(), str(tmp_path / "w.safetensors"))
    settings = {"data": "digits", "model": "resnet10t", "size": 16, "epochs": 1, "max_train": 64}
    graft.train(**settings, weights=str(tmp_path / "w.safetensors"), run_dir=str(tmp_path / "r"))
    assert (tmp_path / "r" / "transfer.json").is_file()
    graft.train(**settings, run_dir=str(tmp_path / "r"), force=True)
    assert not (tmp_path / "r" / "transfer.json").exists()
