"""The "not sure" threshold: calibrated on validation predictions, stored in graft.json, defaulted for old bundles."""

from __future__ import annotations

import json

import numpy as np
import pytest

from graft import record
from graft.errors import GraftError
from graft.evaluation import EvalResult, calibrate_confidence
from test_record import _good, _write


def _result(confidence: list[float], correct: list[bool]) -> EvalResult:
    labels = np.zeros(len(confidence), dtype=np.int64)
    predicted = np.where(np.array(correct), 0, 1)
    return EvalResult(["a", "b"], labels, predicted, np.array(confidence, dtype=np.float32), 0.0)


def test_threshold_is_where_validation_accuracy_reaches_the_target():
    # 60 confident and right, then 40 unsure of which half are wrong: 95 % is reached only above the unsure ones.
    confident = np.linspace(0.99, 0.8, 60).tolist()
    unsure = np.linspace(0.7, 0.55, 40).tolist()
    result = _result(confident + unsure, [True] * 60 + [True, False] * 20)
    calibrated = calibrate_confidence(result, target=0.95)
    assert calibrated.source == "validation" and calibrated.images == 100
    assert 0.55 < calibrated.threshold <= 0.8
    answered = np.array(confident + unsure, dtype=np.float32) >= calibrated.threshold
    assert (np.array([True] * 60 + [True, False] * 20)[answered]).mean() >= 0.95
    assert calibrated.answered == pytest.approx(answered.mean())
    # The same predictions with a looser target answer more of them.
    assert calibrate_confidence(result, target=0.8).threshold < calibrated.threshold


def test_a_perfect_model_keeps_the_default_floor_and_a_hopeless_one_answers_nothing():
    perfect = calibrate_confidence(_result(np.linspace(0.3, 1.0, 50).tolist(), [True] * 50))
    assert perfect.threshold == record.DEFAULT_CONFIDENCE_THRESHOLD, "below even odds is never an answer"
    hopeless = calibrate_confidence(_result(np.linspace(0.3, 0.9, 50).tolist(), [True, False] * 25))
    assert hopeless.threshold > 0.9 and hopeless.answered == 0.0 and hopeless.answered_accuracy is None


def test_a_model_saturated_at_one_that_misses_the_target_is_never_sure():
    # float32 softmax gives exactly 1.0 often: 40 right and 10 wrong at 1.0, then 50 wrong at 0.7 (80 % at 1.0)
    saturated = calibrate_confidence(_result([1.0] * 50 + [0.7] * 50, [True] * 40 + [False] * 60))
    assert saturated.threshold > 1.0 and saturated.answered == 0.0, "1.0 answers were right only 80 % of the time"


def test_ties_are_answered_together_and_few_images_calibrate_nothing():
    tied = calibrate_confidence(_result([0.9] * 40 + [0.6] * 40, [True] * 40 + [True] * 20 + [False] * 20))
    assert tied.threshold == pytest.approx(0.9) and tied.answered == pytest.approx(0.5)
    few = calibrate_confidence(_result([0.9] * 5, [True] * 5))
    assert (few.source, few.threshold, few.images) == ("default", record.DEFAULT_CONFIDENCE_THRESHOLD, 5)


def test_the_record_keeps_old_bundles_readable_and_validates_the_threshold(tmp_path):
    old = record.read(_write(tmp_path, _good()))
    assert old.confidence is None and old.confidence_or_default().threshold == 0.5
    data = {**_good(), "confidence": {"threshold": 0.72, "source": "validation", "target_accuracy": 0.95}}
    (tmp_path / "new").mkdir()
    read = record.read(_write(tmp_path / "new", data))
    assert read.confidence.threshold == 0.72 and read.to_json()["confidence"]["source"] == "validation"
    (tmp_path / "bad").mkdir()
    bad = {**_good(), "confidence": {"threshold": 1.6, "source": "validation"}}
    with pytest.raises(GraftError, match=r"confidence\.threshold"):
        record.read(_write(tmp_path / "bad", bad))
    assert json.dumps(record.json_schema()).count("ConfidenceRecord") >= 1


def test_training_calibrates_and_the_model_info_serves_it(tiny_run, tmp_path):
    """`graft train` stores a validation-calibrated threshold; GET /v1/model gives it, the test accuracy, and the
    default for a bundle written before calibration existed."""
    import shutil

    from fastapi.testclient import TestClient

    from graft.serve import create_app

    saved = record.read(tiny_run.bundle.path)
    assert saved.confidence is not None and saved.confidence.source == "validation"
    assert saved.confidence.images == saved.provenance.data.valid
    assert record.DEFAULT_CONFIDENCE_THRESHOLD <= saved.confidence.threshold <= 1
    with TestClient(create_app(tiny_run.bundle.path, engine="torch"), base_url="http://127.0.0.1") as client:
        info = client.get("/v1/model").json()
    assert info["confidence"] == saved.confidence.model_dump(mode="json")
    assert info["test_accuracy"] == saved.metrics["test_acc"] and info["classes"] == saved.classes

    old = tmp_path / "old"
    shutil.copytree(tiny_run.bundle.path, old)
    data = json.loads((old / record.META_FILE).read_text())
    del data["confidence"]
    (old / record.META_FILE).write_text(json.dumps(data))
    with TestClient(create_app(old, engine="torch"), base_url="http://127.0.0.1") as client:
        assert client.get("/v1/model").json()["confidence"] == {**record.DEFAULT_CONFIDENCE.model_dump(mode="json")}


def test_an_exact_surgery_keeps_the_threshold_and_an_inexact_one_drops_it(tiny_run, tmp_path):
    from graft.surgery import reshape

    calibrated = record.read(tiny_run.bundle.path).confidence
    assert calibrated is not None
    exact = reshape(tiny_run.bundle.path, tmp_path / "rgb", channels=3)
    assert exact.verdict == "exact" and record.read(tmp_path / "rgb").confidence == calibrated
    resized = reshape(
        tiny_run.bundle.path, tmp_path / "big", size=32, size_mode="resample", probe="digits", probe_count=8
    )
    assert resized.verdict != "exact" and record.read(tmp_path / "big").confidence is None
