"""Serving a rounds project: its promoted bundle is served, and a newly promoted round replaces it by itself."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx
import pytest
import torch
from PIL import Image

import graft
import graft.rounds as rounds
from cli_helpers import run_cli as cli
from graft.io import atomic_write_json
from graft.serve.app import create_app
from serve_helpers import digit, encode, live_server


def _project(tmp_path: Path, serve_bundle: Path) -> Path:
    """A rounds project with two trained rounds (the second a perturbed copy of the first); round 1 is current."""
    project = tmp_path / "proj"
    rounds.init(project, model="resnet10t", input_mode="fold", size=16)
    shutil.copytree(serve_bundle, project / "rounds/1-plain/bundle")
    _perturb(graft.load(serve_bundle)).save(project / "rounds/2-busy/bundle")
    _promote(project, 1, "plain")
    return project


def _perturb(bundle: graft.Bundle) -> graft.Bundle:
    with torch.no_grad():
        for parameter in bundle.model.parameters():
            parameter.add_(torch.randn_like(parameter) * 1e-3)
    return bundle


def _promote(project: Path, index: int, name: str) -> None:
    pointer = {"round": name, "index": index, "bundle": f"rounds/{index}-{name}/bundle", "why": "test"}
    atomic_write_json(project / "current.json", pointer)


def _served(url: str, changed_from: str, seconds: float = 15) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        model = httpx.get(f"{url}/readyz").json()["model"]
        if model != changed_from:
            return model
        time.sleep(0.05)
    return changed_from


def test_serving_a_project_follows_its_promotions(serve_bundle, tmp_path):
    project = _project(tmp_path, serve_bundle)
    app = create_app(project, engine="torch", watch_s=0.05, reload_root=serve_bundle.parent)
    pixels, label = digit(3)
    with live_server(app) as url:
        info = httpx.get(f"{url}/v1/model").json()
        first = info["model"]
        assert first.startswith("1-plain-") and info["project"] == str(project.resolve())

        _promote(project, 2, "busy")  # what `graft rounds train` does when round 2 passes the gate
        second = _served(url, first)
        assert second.startswith("2-busy-")
        answer = httpx.post(f"{url}/v1/predict", content=encode(Image.fromarray(pixels))).json()
        assert answer["model"] == second and answer["top"][0]["class"] == label

        _perturb(graft.load(project / "rounds/2-busy/bundle")).save(project / "rounds/2-busy/bundle", overwrite=True)
        _promote(project, 2, "busy")  # a redone round: the same directory with new weights is a new model
        redone = _served(url, second)
        assert redone.startswith("2-busy-") and redone != second
        second = redone

        (project / "rounds/3-broken/bundle").mkdir(parents=True)
        _promote(project, 3, "broken")  # a bundle that cannot load is refused; the served model stays
        assert _served(url, second, seconds=1) == second
        _promote(project, 1, "plain")  # and the watcher is still there for the next promotion
        assert _served(url, second).startswith("1-plain-")

        # a pinned reload that fails keeps following the project; one that loads stops following it
        failed = httpx.post(f"{url}/v1/reload", json={"bundle": str(tmp_path / "nowhere")}, timeout=30)
        assert failed.status_code == 422 and httpx.get(f"{url}/v1/model").json()["project"] is not None
        httpx.post(f"{url}/v1/reload", json={"bundle": str(serve_bundle)}, timeout=30).raise_for_status()
        pinned = httpx.get(f"{url}/v1/model").json()
        assert pinned["project"] is None
        _promote(project, 2, "busy")
        assert _served(url, pinned["model"], seconds=1) == pinned["model"]


def test_a_plain_reload_takes_the_promoted_bundle(serve_bundle, tmp_path):
    project = _project(tmp_path, serve_bundle)
    with live_server(create_app(project, engine="torch", watch_s=0)) as url:  # no watcher: only reload moves it
        first = httpx.get(f"{url}/readyz").json()["model"]
        _promote(project, 2, "busy")
        time.sleep(0.3)
        assert httpx.get(f"{url}/readyz").json()["model"] == first
        reloaded = httpx.post(f"{url}/v1/reload", timeout=30).json()
        assert reloaded["previous"] == first and reloaded["model"].startswith("2-busy-")


def test_a_project_without_a_promoted_round_is_a_clear_error(tmp_path, capsys):
    project = tmp_path / "empty"
    rounds.init(project, model="resnet10t")
    with pytest.raises(graft.GraftError, match="no promoted round yet"):
        create_app(project)
    code, _, err = cli(["serve", str(project), "--port", "0"], capsys)
    assert code == 2 and "no promoted round yet" in err and "Traceback" not in err


def test_cli_bundle_commands_take_a_project(serve_bundle, tmp_path, capsys):
    project = _project(tmp_path, serve_bundle)
    pixels, label = digit(3)
    image = tmp_path / "digit.png"
    Image.fromarray(pixels).save(image)
    code, out, err = cli(["predict", str(project), str(image)], capsys)
    assert code == 0, err
    assert "using round 1 (plain)" in err and out.startswith(f"{image}: {label} (")
    code, out, err = cli(["info", str(project), "--json"], capsys)
    assert code == 0 and '"classes"' in out
