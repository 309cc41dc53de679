"""The second user's story end to end: phone videos → frames → two rounds (plain, then busy backgrounds) → a
server that follows the promoted round. Videos are encoded here with PyAV; every step goes through the CLI."""

from __future__ import annotations

import json
import time
from pathlib import Path

import av
import httpx
import numpy as np
from PIL import Image

from cli_helpers import run_cli as cli
from graft.serve.app import create_app
from serve_helpers import encode, live_server

OBJECTS = ("square", "hbar", "vbar")
HEIGHT, WIDTH = 48, 64


def _frame(shape: str, background: np.ndarray, i: int) -> np.ndarray:
    """The object, drifting a pixel per frame, painted bright over `background`."""
    image = background.copy()
    top, left = 14 + (i % 5), 22 + (i % 7)
    rows, cols = {"square": (18, 18), "hbar": (8, 26), "vbar": (26, 8)}[shape]
    image[top : top + rows, left : left + cols] = (235, 220, 60)
    return image


def _background(busy: bool, seed: int) -> np.ndarray:
    if not busy:
        return np.full((HEIGHT, WIDTH, 3), 50, np.uint8)
    rng = np.random.default_rng(seed)
    gradient = np.linspace(0, 90, WIDTH)[None, :, None]
    noise = rng.integers(0, 110, (HEIGHT, WIDTH, 3))
    return np.clip(gradient + noise, 0, 160).astype(np.uint8)


def _video(path: Path, shape: str, busy: bool, seed: int, frames: int = 24) -> Path:
    background = _background(busy, seed)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=30)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.bit_rate = 2_000_000
        for i in range(frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(_frame(shape, background, i), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_videos_to_rounds_to_a_server_that_follows_them(tmp_path, capsys):
    videos, data = tmp_path / "videos", tmp_path / "data"
    videos.mkdir()
    for r, busy in ((1, False), (2, True)):
        for n, shape in enumerate(OBJECTS):
            for split, seed in (("train", 10 * n + r), ("test", 100 + 10 * n + r)):
                clip = _video(videos / f"r{r}-{shape}-{split}.mp4", shape, busy, seed)
                out = str(data / f"round{r}" / split)
                code, _, err = cli(["data", "frames", str(clip), "--label", shape, "-o", out], capsys)
                assert code == 0, err

    project = tmp_path / "proj"
    init = ["rounds", "init", str(project), "--model", "resnet10t", "--input-mode", "fold", "--size", "24"]
    init += ["--epochs", "5", "--batch-size", "8", "--precision", "fp32", "--max-forgetting", "1"]
    # One video per class and split: validation cannot come from another video (graft would hold out the end of
    # each video and warn); this story is about rounds and serving, so it splits frame by frame as it always did.
    init += ["--group-by", "none"]
    assert cli(init, capsys)[0] == 0
    add = ["rounds", "add", str(project), "round1", "--data", f"folder:{data / 'round1'}"]
    assert cli(add, capsys)[0] == 0
    code, _, err = cli(["rounds", "train", str(project), "--workers", "0"], capsys)
    assert code == 0, err

    frame = _frame("vbar", _background(True, 999), 3)  # a new photo against a busy background
    with live_server(create_app(project, engine="torch", watch_s=0.1)) as url:
        served = httpx.get(f"{url}/v1/model").json()
        assert served["project"] == str(project.resolve()) and served["classes"] == sorted(OBJECTS)
        assert served["model"].startswith("1-round1-")

        # the busier round trains while the phone keeps being served, and replaces round 1 once promoted
        add = ["rounds", "add", str(project), "round2", "--data", f"folder:{data / 'round2'}"]
        assert cli(add, capsys)[0] == 0
        code, _, err = cli(["rounds", "train", str(project), "--workers", "0"], capsys)
        assert code == 0, err
        summary = json.loads(cli(["rounds", "status", str(project), "--json"], capsys)[1])
        first, second = summary["matrix"]
        assert first[0] > 0.6 and min(second) > 0.6, summary["matrix"]  # chance is 1/3
        assert summary["current"]["round"] == "round2"
        deadline = time.monotonic() + 15
        while httpx.get(f"{url}/readyz").json()["model"].startswith("1-") and time.monotonic() < deadline:
            time.sleep(0.05)
        answer = httpx.post(f"{url}/v1/predict", content=encode(Image.fromarray(frame))).json()
    assert answer["model"].startswith("2-round2-")
    offline = cli(["predict", str(project), _save(tmp_path / "photo.png", frame), "--json"], capsys)[1]
    assert json.loads(offline)[0]["top"][0] == answer["top"][0]  # the same preprocessing and model


def _save(path: Path, pixels: np.ndarray) -> str:
    Image.fromarray(pixels).save(path)
    return str(path)
