"""Training the next round from the server: POST /v1/rounds, GET /v1/training, one at a time, and nothing lost
when the server stops mid-round."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

import graft
from graft.rounds.inbox import save_samples
from graft.serve.app import create_app
from graft.serve.training import read_state
from serve_helpers import encode, live_server
from training_helpers import NEW_CLASSES, served_project, teach_image, wait_for

TOKEN = {"Authorization": "Bearer s3cret"}


def _fill_inbox(project: Path, per_class: int = 8) -> set[str]:
    """Photos of the new classes saved in the inbox as POST /v1/samples saves them; their content hashes."""
    saved = set()
    for kind in NEW_CLASSES:
        photos = [encode(Image.fromarray(teach_image(kind, seed=n))) for n in range(per_class)]
        saved |= {s["sha256"] for s in save_samples(project, kind, photos).to_dict()["saved"]}
    assert len(saved) == per_class * len(NEW_CLASSES)
    return saved


@pytest.fixture(scope="module")
def trained_project(tmp_path_factory):
    """Round 1 trained once for the module; each test works on its own copy."""
    return served_project(tmp_path_factory.mktemp("train-from-page"))


def _copy(project: Path, tmp_path: Path) -> Path:
    import shutil

    target = tmp_path / "proj"
    shutil.copytree(project, target, symlinks=True)
    return target


def test_training_routes_need_the_token_and_a_project(serve_bundle, trained_project, tmp_path):
    with live_server(create_app(serve_bundle, engine="torch")) as url:
        refused = httpx.post(f"{url}/v1/rounds")
        assert refused.status_code == 409 and refused.json()["code"] == "not_a_rounds_project"
    project = _copy(trained_project, tmp_path)
    with live_server(create_app(project, engine="torch", token="s3cret")) as url:
        assert httpx.post(f"{url}/v1/rounds").status_code == 401
        assert httpx.get(f"{url}/v1/training").status_code == 401
        idle = httpx.get(f"{url}/v1/training", headers=TOKEN).json()
        assert idle["state"] == "idle" and idle["serving"].startswith("1-digits-")
        empty = httpx.post(f"{url}/v1/rounds", headers=TOKEN, json={"name": "../x"})
        assert empty.status_code == 422, empty.text
    assert not (project / "training.json").exists()
    assert [r["name"] for r in graft.rounds.status(project)["rounds"]] == ["digits"]


def test_a_round_trained_from_the_server_is_served_once_promoted(trained_project, tmp_path):
    project = _copy(trained_project, tmp_path)
    _fill_inbox(project)
    photo = encode_image("stripes", seed=99)
    with live_server(create_app(project, engine="torch", token="s3cret", watch_s=0.2)) as url:
        before = httpx.post(f"{url}/v1/predict", headers=TOKEN, content=photo).json()
        assert before["model"].startswith("1-digits-")
        started = httpx.post(f"{url}/v1/rounds", headers=TOKEN, json={})
        assert started.status_code == 202, started.text
        assert started.json()["round"] == "phone-2"
        again = httpx.post(f"{url}/v1/rounds", headers=TOKEN)
        assert again.status_code == 409 and again.json()["code"] == "training_busy"
        seen = []
        answer = {}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            answer = httpx.get(f"{url}/v1/training", headers=TOKEN).json()
            seen.append((answer["state"], answer["epoch"]))
            # predictions keep being answered while the round trains
            assert httpx.post(f"{url}/v1/predict", headers=TOKEN, content=photo).status_code == 200
            if answer["state"] in ("promoted", "rejected", "failed"):
                break
            time.sleep(0.1)
        assert answer["state"] == "promoted", answer
        assert answer["epoch"] == answer["epochs"] == 4 and answer["gate"]["promoted"] is True
        assert 0 <= answer["accuracy"] <= 1
        assert ("training", 1) in seen or any(s == "training" and 0 < e < 4 for s, e in seen), seen
        after = httpx.post(f"{url}/v1/predict", headers=TOKEN, content=photo).json()
    assert after["model"].startswith("2-phone-2-"), after  # switched by itself, at once
    assert after["top"][0]["class"] == "stripes", after
    assert graft.load(project).classes == ["0", "1", *NEW_CLASSES]


def encode_image(kind: str, seed: int) -> bytes:
    return encode(Image.fromarray(teach_image(kind, seed)))


def test_nothing_is_lost_when_the_server_stops_mid_round(trained_project, tmp_path):
    project = _copy(trained_project, tmp_path)
    inbox = _fill_inbox(project)
    # the inbox's round, added as `graft rounds add --inbox --epochs 8` does (enough epochs to stop it between two);
    # POST /v1/rounds trains the pending round rather than adding another
    graft.rounds.add_from_inbox(project, "phone-2", settings={"epochs": 8})
    run = project / "rounds/2-phone-2/run"
    with live_server(create_app(project, engine="torch", watch_s=0)) as url:
        assert httpx.post(f"{url}/v1/rounds").status_code == 202
        deadline = time.monotonic() + 120
        while not (run / "checkpoint.pt").is_file() and time.monotonic() < deadline:
            time.sleep(0.02)
    # the server stopped: its training stopped too, between epochs, with its checkpoint kept
    stopped = graft.rounds.status(project)["rounds"][1]
    assert stopped["status"] == "interrupted", stopped
    state = read_state(project)
    assert state["want"] == "train" and state["round"] == "phone-2"
    with live_server(create_app(project, engine="torch", watch_s=0)) as url:
        resumed = httpx.get(f"{url}/v1/training").json()
        assert resumed["state"] in ("training", "measuring", "promoted"), resumed
        done = wait_for(url, {}, ("promoted", "rejected", "failed", "interrupted"))
        assert done["state"] == "promoted", done
        served = httpx.get(f"{url}/v1/model").json()["model"]
    assert served.startswith("2-phone-2-")
    assert read_state(project)["resumes"] == 1
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, 9)), epochs  # resumed where it stopped: no epoch lost or repeated
    taken = {path.stem for path in (project / "samples" / "phone-2").rglob("*.png")}
    assert taken == inbox  # every taught photo is in the round's data
    assert "resuming" in (project / "training.log").read_text()


def test_a_round_another_process_trains_is_followed_not_started_twice(trained_project, tmp_path):
    from graft.rounds.project import locked
    from graft.serve.training import write_state

    project = _copy(trained_project, tmp_path)
    _fill_inbox(project, per_class=3)
    graft.rounds.add_from_inbox(project, "phone-2")
    # what a server killed mid-round leaves: its training child still holds the project (here: this test)
    write_state(project, {"round": "phone-2", "index": 2, "want": "train", "exit_code": None})
    with locked(project), live_server(create_app(project, engine="torch", watch_s=0)) as url:
        followed = httpx.get(f"{url}/v1/training").json()
        assert (followed["state"], followed["round"], followed["pid"]) == ("training", "phone-2", None)
        busy = httpx.post(f"{url}/v1/rounds")
        assert busy.status_code == 409 and busy.json()["code"] == "training_busy", busy.text
    assert not (project / "rounds/2-phone-2/run").exists(), "nothing was started beside the other process"


def test_a_training_that_fails_is_reported_with_its_last_line(trained_project, tmp_path):
    import asyncio
    import sys

    from graft.serve.training import TrainingWorker

    project = _copy(trained_project, tmp_path)
    _fill_inbox(project, per_class=3)
    fails = [sys.executable, "-c", "import sys; print('graft: out of disk space'); sys.exit(2)"]

    async def run() -> dict:
        worker = TrainingWorker(project, lambda p, n: graft.rounds.add_from_inbox(p, "phone-2")["round"], command=fails)
        started = await worker.start()
        assert started["state"] == "training" and started["round"] == "phone-2"
        await worker.follower
        return worker.status()

    answer = asyncio.run(run())
    assert (answer["state"], answer["note"]) == ("failed", "graft: out of disk space"), answer
    assert graft.rounds.status(project)["rounds"][1]["status"] == "pending"  # train again: it resumes
