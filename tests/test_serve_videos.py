"""POST /v1/samples/video: a short clip's frames, extracted on the server as `graft data frames` does, land in the
inbox like photos; anything else is refused whole, with nothing written."""

from __future__ import annotations

import shutil
from pathlib import Path

import av
import httpx
import numpy as np
import pytest

import graft.rounds as rounds
from graft.io import atomic_write_json
from graft.rounds.inbox import counts
from graft.serve.app import create_app
from serve_helpers import encode, live_server
from training_helpers import teach_image

TOKEN = {"Authorization": "Bearer s3cret"}


@pytest.fixture
def project(serve_bundle, tmp_path) -> Path:
    """A served rounds project (round 1: the tiny digits bundle, promoted) without training anything."""
    project = tmp_path / "proj"
    rounds.init(project, model="resnet10t", input_mode="fold", size=16)
    shutil.copytree(serve_bundle, project / "rounds/1-digits/bundle")
    pointer = {"round": "digits", "index": 1, "bundle": "rounds/1-digits/bundle", "why": "test"}
    atomic_write_json(project / "current.json", pointer)
    return project


def _video(path: Path, frames: int, rate: int, side: int = 32) -> bytes:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=rate)
        stream.width, stream.height, stream.pix_fmt = side, side, "yuv420p"
        for i in range(frames):
            gray = teach_image("stripes", seed=i, size=side)
            frame = av.VideoFrame.from_ndarray(np.repeat(gray[:, :, None], 3, axis=2), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path.read_bytes()


def _send(url: str, data: bytes, label: str = "stripes", headers: dict | None = None) -> httpx.Response:
    files = {"file": ("clip.mp4", data, "video/mp4")}
    headers = TOKEN if headers is None else headers
    return httpx.post(f"{url}/v1/samples/video", data={"label": label}, files=files, headers=headers)


def _inbox_files(project: Path) -> list[Path]:
    inbox = project / "inbox"
    return sorted(p for p in inbox.rglob("*.png")) if inbox.exists() else []


def test_a_video_becomes_photos_in_the_inbox(project, tmp_path):
    clip = _video(tmp_path / "clip.mp4", frames=30, rate=10)  # 3 s: 15 frames at 5 a second
    with live_server(create_app(project, engine="torch", token="s3cret")) as url:
        assert _send(url, clip, headers={}).status_code == 401
        answer = _send(url, clip)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["label"] == "stripes" and body["frames"] == 15
        assert len(body["saved"]) + len(body["duplicates"]) == 15
        again = _send(url, clip).json()  # the same clip again: every frame is a duplicate
        assert again["saved"] == [] and len(again["duplicates"]) == 15
        assert len({s["split"] for s in body["saved"]}) == 1, "a video's frames share one side of the split"
    assert sum(counts(project)["stripes"].values()) == len(body["saved"]) == len(_inbox_files(project))
    assert not list(tmp_path.glob("**/upload")), "the video itself is never kept"


def test_what_is_not_a_short_video_is_refused_and_nothing_is_written(project, tmp_path):
    long_clip = _video(tmp_path / "long.mp4", frames=62, rate=1, side=16)  # 62 s
    big_clip = _video(tmp_path / "big.mp4", frames=2, rate=10, side=64)
    photo = encode(__import__("PIL.Image").Image.fromarray(teach_image("bright", 1)))
    with live_server(create_app(project, engine="torch", token="s3cret", max_side=48)) as url:
        cases = {
            "long": (_send(url, long_clip), 413, "video_too_long"),
            "big": (_send(url, big_clip), 413, "image_too_large"),
            "photo": (_send(url, photo), 422, "not_a_video"),
            "junk": (_send(url, b"\x00\x00\x00\x18ftypmp42" + b"junk" * 100), 422, "not_a_video"),
            "path label": (_send(url, _video(tmp_path / "ok.mp4", 4, 10), label="../x"), 422, "invalid_label"),
            "two files": (
                httpx.post(
                    f"{url}/v1/samples/video",
                    data={"label": "a"},
                    files=[("file", ("a.mp4", long_clip)), ("file", ("b.mp4", long_clip))],
                    headers=TOKEN,
                ),
                413,
                "too_many_files",
            ),
        }
    for name, (response, status, code) in cases.items():
        assert (response.status_code, response.json()["code"]) == (status, code), (name, response.text)
        assert str(tmp_path) not in response.json()["detail"] and "graft-video-" not in response.json()["detail"]
    assert _inbox_files(project) == []
    assert not (project.parent / "x").exists()
