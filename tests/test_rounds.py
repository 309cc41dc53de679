"""Rounds end to end on tiny folder data: warm starts, a growing class set, the gate, resume, the CLI."""

from __future__ import annotations

import io
import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from safetensors.numpy import load_file

import graft
import graft.rounds as rounds
import graft.rounds.project as rounds_project
import graft.rounds.run as rounds_run
from cli_helpers import run_cli as cli
from graft.bundle import load
from graft.errors import Interrupted
from rounds_helpers import digit_folder

SETTINGS = dict(
    model="resnet10t", input_mode="fold", size=16, epochs=1, batch_size=16, lr=3e-3, workers=0, precision="fp32"
)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    """Three rounds: plain digits 0-2, the same classes inverted, and plain again with a new class 3."""
    root = tmp_path_factory.mktemp("round-data")
    return {
        "plain": digit_folder(root / "plain", ["0", "1", "2"]),
        "inverted": digit_folder(root / "inverted", ["0", "1", "2"], invert=True, offset=30),
        "grown": digit_folder(root / "grown", ["0", "1", "2", "3"], offset=60, per_class=16),
    }


def test_rounds_cli_flow_with_new_class(tmp_path, data, capsys, monkeypatch):
    project = tmp_path / "proj"
    flags = ["--model", "resnet10t", "--input-mode", "fold", "--size", "16", "--epochs", "1", "--batch-size", "16"]
    code, out, err = cli(
        [
            "rounds",
            "init",
            str(project),
            *flags,
            "--precision",
            "fp32",
            "--max-forgetting",
            "1",
            "--min-accuracy",
            "0",
            "--max-accuracy-drop",
            "1",
        ],
        capsys,
    )
    assert code == 0, err
    for name in ("plain", "inverted", "grown"):
        code, out, err = cli(["rounds", "add", str(project), name, "--data", data[name]], capsys)
        assert code == 0, err
    code, out, err = cli(["rounds", "train", str(project), "--workers", "0"], capsys)
    assert code == 0, err
    assert "accuracy matrix" in out and "current: round 3 (grown)" in out

    summary = json.loads(cli(["rounds", "status", str(project), "--json"], capsys)[1])
    assert [r["status"] for r in summary["rounds"]] == ["promoted"] * 3
    matrix = summary["matrix"]
    assert [sum(v is not None for v in row) for row in matrix] == [1, 2, 3]  # lower triangle and diagonal
    assert summary["final"]["forgetting"] is not None and summary["current"]["bundle"] == "rounds/3-grown/bundle"

    first, third = load(project / "rounds/1-plain/bundle"), load(project / "rounds/3-grown/bundle")
    assert first.classes == ["0", "1", "2"] and third.classes == ["0", "1", "2", "3"]  # the head grew by name
    assert third.provenance.continued_from.bundle.endswith("rounds/2-inverted/bundle")
    parts = json.loads((project / "rounds/3-grown/data.json").read_text())["parts"]
    assert [p["source"] for p in parts] == [data["plain"], data["inverted"], data["grown"]]
    assert (project / "report.json").is_file() and (project / "matrix.png").stat().st_size > 0

    # nothing pending: a second train trains nothing
    monkeypatch.setattr(rounds_run, "train_model", lambda **_: pytest.fail("retrained a finished round"))
    assert cli(["rounds", "train", str(project)], capsys)[0] == 0


def test_gate_keeps_previous_current(tmp_path, data, monkeypatch):
    project = tmp_path / "proj"
    rounds.init(project, max_forgetting=0.05, **SETTINGS)
    rounds.add(project, "plain", data["plain"])
    rounds.add(project, "inverted", data["inverted"], naive=True)
    # round 1 on plain; round 2 on plain (forgot 0.3), on inverted; round 1 (current) on inverted
    scripted = iter([0.9, 0.6, 0.9, 0.3])
    monkeypatch.setattr(rounds_run, "test_accuracy", lambda bundle, images, **_: next(scripted))
    summary = rounds.train(project)
    first, second = summary["rounds"]
    assert first["status"] == "promoted" and second["status"] == "rejected"
    assert second["metrics"]["forgetting"] == pytest.approx(0.3)
    assert second["gate"]["refused_by"] == ["max-forgetting"] and second["gate"]["current_average"] == 0.6
    assert "exceeds" in second["gate"]["why"] and "30.00%" in second["gate"]["why"]
    assert summary["current"]["round"] == "plain" and summary["current"]["bundle"] == "rounds/1-plain/bundle"
    lines = "\n".join(rounds_run.status_lines(rounds.status(project)))
    assert "rejected" in lines and "refused by max-forgetting" in lines and "current: round 1 (plain)" in lines
    # the naive round trained on its own data only
    assert json.loads((project / "rounds.json").read_text())["rounds"][1]["training_data"]["parts"] == [
        {"source": data["inverted"], "fraction": 1.0}
    ]


def test_redo_a_rejected_round_with_replay_and_its_own_settings(tmp_path, data, capsys, monkeypatch):
    project = tmp_path / "proj"
    rounds.init(project, max_forgetting=0.05, **SETTINGS)
    rounds.add(project, "plain", data["plain"])
    rounds.add(project, "inverted", data["inverted"], naive=True)
    rounds.add(project, "grown", data["grown"])
    # round 2 forgets 0.3 of round 1: rejected; round 3 passes (after each row: the current round 1 on the new splits)
    scripted = iter([0.9, 0.6, 0.9, 0.3, 0.9, 0.9, 0.9, 0.3, 0.3])
    monkeypatch.setattr(rounds_run, "test_accuracy", lambda bundle, images, **_: next(scripted))
    summary = rounds.train(project)
    assert [r["status"] for r in summary["rounds"]] == ["promoted", "rejected", "promoted"]
    assert summary["current"]["round"] == "grown"
    lines = "\n".join(rounds_run.status_lines(summary))
    assert f"graft rounds redo {project} inverted --replay" in lines

    code, out, err = cli(["rounds", "redo", str(project), "inverted", "--replay", "0.5", "--epochs", "2"], capsys)
    assert code == 0, err
    assert "pending again: inverted, grown" in out
    (stamp,) = (project / "archive").iterdir()
    archived = sorted(round_dir.name for round_dir in (stamp / "rounds").iterdir())
    assert archived == ["2-inverted", "3-grown"] and not (project / "rounds/2-inverted").exists()
    state = rounds.status(project)
    assert [r["status"] for r in state["rounds"]] == ["promoted", "pending", "pending"]
    assert state["current"]["round"] == "plain" and "being redone" in state["current"]["why"]
    assert state["rounds"][1]["mode"] == "replay" and state["rounds"][1]["settings"] == {"epochs": 2}
    assert state["matrix"] == [[0.9]]

    scripted = iter([0.88, 0.9, 0.3, 0.88, 0.9, 0.9, 0.3])  # now round 2 forgets 0.02: promoted
    monkeypatch.setattr(rounds_run, "test_accuracy", lambda bundle, images, **_: next(scripted))
    summary = rounds.train(project)
    assert [r["status"] for r in summary["rounds"]] == ["promoted", "promoted", "promoted"]
    config = json.loads((project / "rounds/2-inverted/run/config.json").read_text())
    assert config["epochs"] == 2 and config["data"].startswith("mix:")  # its own epochs, replay data
    assert json.loads((project / "rounds/3-grown/run/config.json").read_text())["epochs"] == SETTINGS["epochs"]
    parts = json.loads((project / "rounds/2-inverted/data.json").read_text())["parts"]
    assert [(p["source"], p["fraction"]) for p in parts] == [(data["plain"], 0.5), (data["inverted"], 1.0)]


def _weights(project: Path, round_dir: str) -> dict[str, np.ndarray]:
    return load_file(project / round_dir / "bundle" / "model.safetensors")


def test_resume_interrupted_round_matches_uninterrupted(tmp_path, data, monkeypatch):
    settings = {**SETTINGS, "epochs": 2}
    for name in ("straight", "stopped"):
        rounds.init(tmp_path / name, max_forgetting=None, min_accuracy=0.0, max_accuracy_drop=None, **settings)
        rounds.add(tmp_path / name, "plain", data["plain"])
        rounds.add(tmp_path / name, "inverted", data["inverted"], replay=0.5)
    rounds.train(tmp_path / "straight")

    real = rounds_run.train_model
    calls: list[dict] = []

    def interrupting(**kwargs):
        calls.append(kwargs)
        if kwargs.get("resume") is None and "inverted" in str(kwargs.get("run_dir")):
            kwargs["on_epoch"] = lambda record, model, spec: os.kill(os.getpid(), signal.SIGINT)
        return real(**kwargs)

    monkeypatch.setattr(rounds_run, "train_model", interrupting)
    with pytest.raises(Interrupted, match="graft rounds train"):
        rounds.train(tmp_path / "stopped")
    state = rounds.status(tmp_path / "stopped")
    assert [r["status"] for r in state["rounds"]] == ["promoted", "interrupted"]

    calls.clear()
    summary = rounds.train(tmp_path / "stopped")
    assert len(calls) == 1 and calls[0]["resume"] is not None  # round 1 not retrained; round 2 resumed
    assert [r["status"] for r in summary["rounds"]] == ["promoted", "promoted"]
    straight, stopped = (
        _weights(tmp_path / "straight", "rounds/2-inverted"),
        _weights(tmp_path / "stopped", "rounds/2-inverted"),
    )
    assert straight.keys() == stopped.keys()
    for key in straight:
        np.testing.assert_array_equal(straight[key], stopped[key], err_msg=key)
    assert summary["matrix"] == rounds.status(tmp_path / "straight")["matrix"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["rounds", "status", "{tmp}/nowhere"], "not a rounds project"),
        (["rounds", "add", "{proj}", "x", "--data", "digits", "--replay", "2"], "--replay takes a fraction"),
        (["rounds", "add", "{proj}", "x", "--data", "digits", "--replay", "0.2", "--naive"], "exclude each other"),
        (["rounds", "add", "{proj}", "bad/name", "--data", "digits"], "round name"),
        (["rounds", "train", "{proj}"], "has no rounds"),
        (["rounds", "add", "{proj}", "x", "--data", "digits", "--lr", "-1"], "round settings: lr"),
        (["rounds", "add", "{proj}", "x", "--data", "folder:{tmp}/missing"], "missing: no such folder"),
        (["rounds", "add", "{proj}", "x", "--data", "minst"], "did you mean mnist"),
        (["rounds", "add", "{proj}", "x", "--data", "digits", "--recipe", "{tmp}/size.toml"], "cannot set size"),
        (["rounds", "redo", "{proj}", "nope"], "no round named 'nope'"),
        (["rounds", "redo", "{proj}", "nope", "--union", "--naive"], "exclude each other"),
        (["rounds", "init", "{proj}"], "already a rounds project"),
        (["rounds", "init", "{tmp}/other", "--max-forgetting", "3"], "--max-forgetting is a fraction"),
        (["rounds", "init", "{tmp}/other", "--epochs", "0"], "epochs"),
    ],
)
def test_rounds_cli_bad_input(tmp_path, capsys, args, message):
    project = tmp_path / "proj"
    rounds.init(project, model="resnet10t")
    (tmp_path / "size.toml").write_text("size = 64\n")
    args = [a.format(tmp=tmp_path, proj=project) for a in args]
    code, out, err = cli(args, capsys)
    assert code == 2
    text = (out + err).strip()
    assert message in text and len(text.splitlines()) == 1 and "Traceback" not in text


def test_redo_falls_back_to_no_current_and_leaves_an_earlier_current_alone(tmp_path, data, monkeypatch):
    project = tmp_path / "proj"
    rounds.init(project, max_forgetting=0.05, **SETTINGS)
    rounds.add(project, "plain", data["plain"])
    rounds.add(project, "inverted", data["inverted"], naive=True)
    scripted = iter([0.9, 0.6, 0.9, 0.3])
    monkeypatch.setattr(rounds_run, "test_accuracy", lambda bundle, images, **_: next(scripted))
    rounds.train(project)
    before = (project / "current.json").read_bytes()
    rounds.redo(project, "inverted", mode="union")  # current is round 1, before the redone round: untouched
    assert (project / "current.json").read_bytes() == before
    state, archive = rounds.redo(project, "plain")  # nothing promoted before round 1: no current at all
    assert rounds.status(project)["current"] is None and state["rounds"][0]["status"] == "pending"
    assert archive is not None and (archive / "rounds/1-plain/bundle/graft.json").is_file()
    assert [r["status"] for r in rounds.status(project)["rounds"]] == ["pending", "pending"]


def test_a_redo_cut_short_is_finished_by_the_next_command(tmp_path, data, monkeypatch):
    project = tmp_path / "proj"
    rounds.init(project, max_forgetting=None, min_accuracy=0.0, **SETTINGS)
    rounds.add(project, "plain", data["plain"])
    rounds.train(project)

    real_finish = rounds_project.finish_archiving
    calls = []

    def crash_on_the_move(directory, state):  # redo's first call tidies up; its second one moves: die there
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_finish(directory, state)

    monkeypatch.setattr(rounds_project, "finish_archiving", crash_on_the_move)
    with pytest.raises(KeyboardInterrupt):
        rounds.redo(project, "plain")
    monkeypatch.undo()
    assert (project / "rounds/1-plain/bundle").is_dir()  # not moved yet, but the manifest says pending
    note = json.loads((project / "rounds.json").read_text())["archiving"]
    assert note["dirs"] == ["rounds/1-plain"] and rounds.status(project)["rounds"][0]["status"] == "pending"

    bundle_there = []

    def stop_before_training(**kwargs):
        bundle_there.append((project / "rounds/1-plain/bundle").exists())
        raise RuntimeError("stop here")

    monkeypatch.setattr(rounds_run, "train_model", stop_before_training)
    with pytest.raises(RuntimeError, match="stop here"):
        rounds.train(project)
    assert bundle_there == [False]  # set aside before training, not measured as if it were this round's
    assert (project / note["to"] / "rounds/1-plain/bundle/graft.json").is_file()
    assert "archiving" not in json.loads((project / "rounds.json").read_text())


def test_init_force_archives_the_old_project_and_a_busy_project_refuses(tmp_path, data):
    project = tmp_path / "proj"
    rounds.init(project, max_forgetting=None, min_accuracy=0.0, **SETTINGS)
    rounds.add(project, "plain", data["plain"])
    rounds.train(project)
    config = json.loads((project / "rounds/1-plain/run/config.json").read_text())
    assert Path(config["output"]).is_absolute() and Path(config["run_dir"]).is_absolute()  # resumable from anywhere

    rounds.init(project, force=True, **SETTINGS)
    archived = next((project / "archive").iterdir())
    assert (archived / "rounds/1-plain/bundle/graft.json").is_file() and (archived / "rounds.json").is_file()
    assert not (project / "rounds").exists() and not (project / "current.json").exists()
    assert rounds.status(project)["rounds"] == []

    with rounds_project.locked(project), pytest.raises(graft.GraftError, match="is busy"):
        rounds.add(project, "plain", data["plain"])
    rounds.add(project, "plain", data["plain"])  # free again


def test_damaged_files_are_one_line_errors(tmp_path, capsys):
    project = tmp_path / "proj"
    rounds.init(project, model="resnet10t")
    (project / "current.json").write_text("{not json")
    code, out, err = cli(["rounds", "status", str(project)], capsys)
    assert code == 2 and "current.json is damaged" in out + err and "Traceback" not in out + err
    (project / "rounds.json").write_text("[]")
    code, out, err = cli(["rounds", "status", str(project)], capsys)
    assert code == 2 and "not a rounds manifest" in out + err


def test_a_round_that_fails_its_own_test_split_is_not_promoted_and_serve_keeps_the_old_one(
    tmp_path, data, capsys, monkeypatch
):
    """The story: round 2 scored 0 % on its own test split, average accuracy 33.3 % -> 16.7 %, forgetting 0 %: a
    forgetting-only gate promoted it and the server switched to it."""
    import subprocess
    import sys

    import httpx

    from test_serve_cli import _free_port, _wait_ready

    project = tmp_path / "proj"
    rounds.init(project, max_forgetting=0.05, **SETTINGS)
    rounds.add(project, "plain", data["plain"])
    # round 1 on plain; round 2 on plain and on its own split (0 %); round 1 (current) on round 2's split
    scripted = iter([1 / 3 + 0.01, 1 / 3 + 0.01, 0.0, 1 / 3])
    monkeypatch.setattr(rounds_run, "test_accuracy", lambda bundle, images, **_: next(scripted))
    rounds.train(project)
    # The server is its own process, as a user runs it, watching the project while this one trains round 2.
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "graft", "serve", str(project), "--port", str(port), "--watch", "0.1"]
    server = subprocess.Popen([*command, "--threads", "1", "--engine", "torch"], stderr=subprocess.PIPE, text=True)
    try:
        _wait_ready(url, server)
        assert httpx.get(f"{url}/v1/model").json()["model"].startswith("1-plain-")
        rounds.add(project, "busy", data["inverted"])
        printed = io.StringIO()
        rounds.train(project, console=Console(file=printed, width=200), workers=0)
        assert "NOT promoted" in printed.getvalue() and "refused by min-accuracy" in printed.getvalue()
        summary = rounds.status(project)
        busy = summary["rounds"][1]
        assert busy["status"] == "rejected" and busy["metrics"]["forgetting"] == pytest.approx(0.0)
        assert busy["gate"]["refused_by"] == ["min-accuracy", "max-accuracy-drop"]
        assert "0.00% on its own test split, no better than chance (33.33%)" in busy["gate"]["why"]
        assert "average accuracy 17.17% vs 33.83% for current round 'plain'" in busy["gate"]["why"]
        assert summary["current"]["round"] == "plain"
        time.sleep(0.5)  # the server watches current.json every 0.1 s: it had time to switch, and must not
        assert httpx.get(f"{url}/v1/model").json()["model"].startswith("1-plain-")
    finally:
        server.terminate()
        server.communicate(timeout=30)
    lines = cli(["rounds", "status", str(project)], capsys)[1]
    assert "rejected" in lines and "refused by min-accuracy" in lines
    gate = "gate: own test accuracy > chance (1/classes); average accuracy drop vs current ≤ 0.00%; forgetting ≤ 5.00%"
    assert gate in lines
