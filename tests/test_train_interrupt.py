"""A run that listens: Ctrl-C during validation stops within seconds (acknowledged at once), progress shows in
logs, and one run directory is trained by one process at a time."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

import graft
import graft.evaluation as evaluation
import graft.rounds as rounds
import graft.rounds.run as rounds_run
from cli_helpers import run_cli
from graft.data.base import ArrayImages
from graft.errors import Interrupted
from graft.lock import locked
from graft.spec import InputSpec
from rounds_helpers import digit_folder

# One training step per epoch and a long validation (90 % of the digits): a Ctrl-C sent after epoch 1's line
# lands in epoch 2's validation.
LONG_VALIDATION = [
    "--data", "digits", "--model", "resnet10t", "--input-mode", "fold", "--size", "32", "--batch-size", "16",
    "--epochs", "2", "--max-train", "16", "--valid-fraction", "0.9", "--workers", "0", "--threads", "1",
    "--precision", "fp32", "--no-recalibrate-bn",
]  # fmt: skip


def _graft(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "graft", *args], env=env, stderr=subprocess.PIPE, text=True)


def _read_until(process: subprocess.Popen, marker: str, timeout: float = 120) -> list[str]:
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        assert line or process.poll() is None, "".join(lines)
        lines.append(line)
        if marker in line:
            return lines
    pytest.fail(f"no {marker!r} within {timeout}s: {''.join(lines)}")


def test_ctrl_c_during_validation_stops_within_seconds_and_resumes(tmp_path):
    run = tmp_path / "run"
    process = _graft("train", *LONG_VALIDATION, "--run-dir", str(run))
    try:
        _read_until(process, "epoch 1/2")
        time.sleep(0.5)  # epoch 2's single step is done by now: validation is running
        sent = time.monotonic()
        process.send_signal(signal.SIGINT)
        heard = [(time.monotonic() - sent, line) for line in iter(process.stderr.readline, "")]
        process.wait(timeout=60)
    finally:
        process.kill()
    rest = "".join(line for _, line in heard)
    assert process.returncode == 128 + signal.SIGINT, rest
    when = {key: next((t for t, line in heard if key in line), None) for key in ("Ctrl-C: stopping", "stopped while")}
    assert when["Ctrl-C: stopping"] is not None and when["Ctrl-C: stopping"] < 2, heard  # acknowledged at once
    assert when["stopped while"] is not None and when["stopped while"] < 5, heard  # after one batch, checkpointed
    assert "stopped while evaluating" in rest and f"graft train --resume {run}" in rest
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1]

    graft.train(resume=run)  # in-process: a second interpreter start costs more than the resumed run
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]  # epoch 2 validated once, after the resume


def test_validation_reports_progress_in_logs_and_stops_when_asked(monkeypatch):
    monkeypatch.setattr(evaluation, "LOG_EVERY_S", 0.0)
    images = ArrayImages("noise", np.zeros((40, 8, 8, 1), np.uint8), np.zeros(40, np.int64), ["a", "b"])
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2))
    spec = InputSpec(size=(8, 8), channels=1, mode="fold", mean=(0.0,), std=(1.0,))
    log = io.StringIO()
    evaluation.evaluate_model(model, spec, images, batch_size=10, console=Console(file=log, width=200))
    assert "evaluating noise: 1/4 batches" in log.getvalue() and "evaluating noise: 3/4 batches" in log.getvalue()
    asked = iter([False, True])
    with pytest.raises(Interrupted, match=r"stopped while evaluating noise \(2/4 batches\)"):
        evaluation.evaluate_model(model, spec, images, batch_size=10, should_stop=lambda: next(asked))


def test_two_trainings_of_one_run_directory_refuse_each_other(tmp_path, capsys):
    run = tmp_path / "run"
    process = _graft("train", *LONG_VALIDATION, "--run-dir", str(run))
    try:
        _read_until(process, "graft train:")  # the run holds its directory from here on
        code, out, err = run_cli(["train", "--resume", str(run)], capsys)
        assert code == 2, out + err
        assert f"{run} is busy: another graft train (process {process.pid}) is training into it" in " ".join(
            (out + err).split()
        )
        code, out, err = run_cli(["train", *LONG_VALIDATION, "--run-dir", str(run), "--force"], capsys)
        assert code == 2 and "is busy" in out + err  # --force does not take a busy run away either
    finally:
        process.kill()
        process.wait()
    # the holder is gone (killed): the kernel dropped its lock with it
    with locked(run, "still busy"):
        pass


def test_rounds_status_says_training_while_a_round_trains(tmp_path, monkeypatch):
    project = tmp_path / "proj"
    settings = dict(model="resnet10t", input_mode="fold", size=16, epochs=1, batch_size=16, workers=0)
    rounds.init(project, max_forgetting=None, min_accuracy=0.0, precision="fp32", **settings)
    rounds.add(project, "plain", digit_folder(tmp_path / "plain", ["0", "1"], per_class=8))
    seen: list[str] = []
    real = rounds_run.train_model

    def watching(**kwargs):
        kwargs["on_epoch"] = lambda *_: seen.append(rounds.status(project)["rounds"][0]["status"])
        return real(**kwargs)

    monkeypatch.setattr(rounds_run, "train_model", watching)
    rounds.train(project)
    assert seen == ["training"]
    assert rounds.status(project)["rounds"][0]["status"] == "promoted"
    assert Path(project / "rounds/1-plain/run/.lock").read_text().strip().isdigit()  # the holder's pid
