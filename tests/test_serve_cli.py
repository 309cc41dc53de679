"""`graft serve` as a user runs it: the addresses it prints, SIGHUP reload, clean stop, one-line errors."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
import torch
from PIL import Image

import graft
from cli_helpers import run_cli as cli
from graft.serve.run import where_to_open
from serve_helpers import digit, encode


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_ready(url: str, process: subprocess.Popen, seconds: float = 120) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"graft serve exited: {process.stderr.read() if process.stderr else ''}")
        try:
            return httpx.get(f"{url}/readyz", timeout=2).json()
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError("graft serve did not become ready")


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="SIGHUP is POSIX")
def test_serve_prints_where_to_open_reloads_on_sighup_and_stops(serve_bundle, tmp_path):
    path = tmp_path / "live"
    shutil.copytree(serve_bundle, path)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "GRAFT_TOKEN": "s3cret", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "graft", "serve", str(path), "--port", str(port), "--threads", "1"]
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    try:
        first = _wait_ready(url, process)
        assert first["engine"] == "onnx"
        auth = {"authorization": "Bearer s3cret"}  # from GRAFT_TOKEN
        data = encode(Image.fromarray(digit(0)[0]))
        assert httpx.post(f"{url}/v1/predict", content=data, timeout=30).status_code == 401
        assert httpx.post(f"{url}/v1/predict", content=data, headers=auth, timeout=30).json()["model"] == first["model"]

        bundle = graft.load(path)  # a new round writes the bundle directory anew
        with torch.no_grad():
            for parameter in bundle.model.parameters():
                parameter.mul_(1.001)
        bundle.save(path, overwrite=True)
        process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 60
        while httpx.get(f"{url}/readyz").json()["model"] == first["model"]:
            assert time.monotonic() < deadline, "SIGHUP did not reload the bundle"
            time.sleep(0.1)
        after = httpx.get(f"{url}/readyz").json()
        assert after["engine"] == "torch"  # the new weights have no export yet
        assert httpx.post(f"{url}/v1/predict", content=data, headers=auth, timeout=30).status_code == 200
    finally:
        process.send_signal(signal.SIGINT)
        try:
            _, err = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            _, err = process.communicate()
    assert f"open http://127.0.0.1:{port}/ on this computer" in err
    assert "only this computer can reach it" in err and "--token" in err
    assert f"reloaded {path}" in err and "Traceback" not in err


def test_serve_mistakes_are_one_line_errors(serve_bundle, tiny_run, tmp_path, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        code, _, err = cli(["serve", str(serve_bundle), "--port", str(port)], capsys)
        assert code == 2 and f"cannot listen on 127.0.0.1:{port}" in err and "--port" in err
    port = str(_free_port())
    for args, words in (
        ([str(tmp_path / "missing")], "not a bundle directory"),
        ([str(tiny_run.bundle.path), "--engine", "onnx"], "--engine onnx: no ONNX export"),
        ([str(serve_bundle), "--engine", "gpu"], "unknown engine 'gpu'"),
        ([str(serve_bundle), "--max-batch", "0"], "--max-batch"),
        ([str(serve_bundle), "--host", "192.0.2.1"], "cannot listen on 192.0.2.1"),  # not this machine's
    ):
        code, _, err = cli(["serve", *args, "--port", port], capsys)
        assert code == 2 and words in err and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1, err


def test_where_to_open_says_who_can_reach_it():
    local = "\n".join(where_to_open("127.0.0.1", 8000, has_token=False))
    assert "http://127.0.0.1:8000/" in local and "only this computer" in local and "--host 0.0.0.0" in local
    lan = "\n".join(where_to_open("0.0.0.0", 8000, has_token=False))
    assert "anyone on this network" in lan and "--token" in lan and "http://127.0.0.1:8000/" in lan
    with_token = "\n".join(where_to_open("192.168.1.20", 8000, has_token=True))
    assert "http://192.168.1.20:8000/?token=TOKEN" in with_token and "need the token" in with_token
    assert "http://[::1]:8000/" in "\n".join(where_to_open("::1", 8000, has_token=False))


def test_help_lists_serve_and_export(capsys):
    for command in ("serve", "export"):
        code, out, _ = cli([command, "--help"], capsys)
        assert code == 0 and "Usage: graft" in out
    code, out, _ = cli(["serve", "--help"], capsys)
    text = " ".join(out.split())
    flags = "--host --port --engine --max-batch --max-delay-ms --token --max-upload-mb --max-pixels --max-queue"
    flags += " --samples-max-files --inbox-max-per-class --inbox-max-total --inbox-max-mb"
    assert all(flag in text for flag in flags.split())
