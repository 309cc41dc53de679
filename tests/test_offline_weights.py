"""`--offline` with `--pretrained imagenet` never touches the network: a cached copy is used, else it fails at once."""

from __future__ import annotations

import socket
import time

import pytest
import timm
from huggingface_hub import constants
from safetensors.torch import save_file

from cli_helpers import run_cli
from graft.errors import GraftError, first_line
from graft.models.hub import cached_hub_weights, hub_state_dict

TINY = "test_resnet"  # timm's test model with hub weights: small enough to fake a cache entry


@pytest.fixture
def no_network(monkeypatch):
    """Every attempt to open a connection is recorded and refused."""
    attempts: list[object] = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path


def test_offline_pretrained_fails_at_once_without_a_socket(no_network, empty_caches, tmp_path, capsys):
    started = time.monotonic()
    code, out, err = run_cli(
        [
            "train",
            "--offline",
            "--pretrained",
            "imagenet",
            "--model",
            "densenet121",
            "--data",
            "digits",
            "--run-dir",
            str(tmp_path / "run"),
            "--epochs",
            "1",
        ],
        capsys,
    )
    elapsed = time.monotonic() - started
    assert code == 2, (out, err)
    assert no_network == []
    assert elapsed < 10
    message = " ".join(err.split())
    assert "--offline" in message and "--weights FILE" in message and "HF_HUB_CACHE" in message
    assert "timm/densenet121" in message
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 3  # one message, however the console wraps


def test_offline_uses_a_cached_hub_copy_without_a_socket(no_network, empty_caches):
    reference = timm.create_model(TINY, pretrained=False)
    for tensor in reference.state_dict().values():
        if tensor.is_floating_point():
            tensor.add_(0.5)  # unlike a fresh initialisation, so loading it is visible
    repo = timm.get_pretrained_cfg(TINY).hf_hub_id
    snapshot = empty_caches / "hf" / f"models--{repo.replace('/', '--')}" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    save_file(reference.state_dict(), str(snapshot / "model.safetensors"))
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("abc123")

    assert cached_hub_weights(TINY) == snapshot / "model.safetensors"
    state = hub_state_dict(TINY, {}, offline=True)
    assert no_network == []
    key = next(k for k in state if k.endswith("weight"))
    assert state[key].equal(reference.state_dict()[key])


def test_offline_hub_refuses_a_model_without_pretrained_weights(no_network, empty_caches):
    with pytest.raises(GraftError, match="no pretrained weights"):
        hub_state_dict("resnet18_not_a_model", {}, offline=True)


def test_long_messages_are_cut_between_words():
    error = RuntimeError("could not reach the hub after many retries " + "connection refused " * 20)
    line = first_line(error, 60)
    assert len(line) <= 60 and line.endswith("…")
    assert line[:-1].split()[-1] in {
        "could",
        "not",
        "reach",
        "the",
        "hub",
        "after",
        "many",
        "retries",
        "connection",
        "refused",
    }
