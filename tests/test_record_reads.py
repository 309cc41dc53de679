"""`graft.json` is parsed in exactly one function, once per command: train --weights, predict and serve."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from cli_helpers import run_cli
from graft import record


@pytest.fixture
def parses(monkeypatch) -> list[str]:
    """Every parse of a `graft.json`, by path."""
    seen: list[str] = []
    original = record._parse

    def counting(path):
        seen.append(str(path))
        return original(path)

    monkeypatch.setattr(record, "_parse", counting)
    return seen


def _bundle_parses(seen: list[str], bundle) -> int:
    return sum(1 for path in seen if path == str(bundle / record.META_FILE))


def test_the_counter_sees_a_parse(tiny_run, parses):
    """The counting hook is live: reading a record counts, so a zero below would be real."""
    record.read(tiny_run.bundle.path)
    assert _bundle_parses(parses, tiny_run.bundle.path) == 1


def test_predict_parses_the_record_once(tiny_run, tmp_path, capsys, parses):
    image = tmp_path / "digit.png"
    Image.fromarray(np.full((8, 8), 200, dtype=np.uint8)).save(image)
    code, _, err = run_cli(["predict", str(tiny_run.bundle.path), str(image)], capsys)
    assert code == 0, err
    assert _bundle_parses(parses, tiny_run.bundle.path) == 1


def test_train_with_weights_parses_the_bundle_once(tiny_run, tmp_path, capsys, parses):
    weights = tmp_path / "weights"
    shutil.copytree(tiny_run.bundle.path, weights)
    code, _, err = run_cli(
        [
            "train", "--data", "digits", "--weights", str(weights), "--epochs", "1", "--max-train", "64",
            "--batch-size", "32", "--run-dir", str(tmp_path / "run"), "-o", str(tmp_path / "out"), "--workers", "0",
        ],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert _bundle_parses(parses, weights) == 1


def test_serve_parses_the_record_once_per_load(serve_bundle, parses):
    from fastapi.testclient import TestClient

    from graft.serve import create_app

    with TestClient(create_app(serve_bundle), base_url="http://127.0.0.1") as client:  # a Host graft answers
        assert client.get("/v1/model").status_code == 200
        assert client.get("/v1/model").status_code == 200
    assert _bundle_parses(parses, serve_bundle) == 1
