"""The phone loop in a real browser (Debian's Chromium at a phone viewport, as test_serve_browser.py): teach two new
classes from the page (photos, a video, and "wrong? it is …"), train the next round from the page, wait for the gate
to promote it, and get a new class predicted.

Set GRAFT_DOCS_SCREENSHOTS=docs/images to refresh the screenshots docs/phone.md shows (otherwise they go to the
test's temporary folder and nothing in the repository changes)."""

from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

import graft
from graft.serve.app import create_app
from serve_helpers import live_server
from test_serve_browser import CHROMIUM, _phone, browser  # noqa: F401 (the fixture)
from training_helpers import save_png, served_project, teach_image

try:
    from playwright.sync_api import expect
except ImportError:  # the module is skipped below
    expect = None

pytestmark = pytest.mark.skipif(
    not CHROMIUM.is_file(), reason="needs Debian's Chromium at /usr/bin/chromium (apt-get install chromium)"
)


def _stripes_video(path: Path, frames: int = 30) -> Path:
    """A 3-second clip of the stripes drifting (a new picture every frame), as a phone records at 10 fps."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i in range(frames):
            gray = teach_image("stripes", seed=1000 + i)
            frame = av.VideoFrame.from_ndarray(np.repeat(gray[:, :, None], 3, axis=2), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("GRAFT_DOCS_SCREENSHOTS") or tmp_path / "shots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_teach_two_classes_train_from_the_page_and_predict_one(browser, tmp_path):  # noqa: F811
    project = served_project(tmp_path, epochs=4)
    shots = _shots(tmp_path)
    bright = [save_png(tmp_path / f"bright-{n}.png", teach_image("bright", seed=n)) for n in range(4)]
    misread = save_png(tmp_path / "bright-misread.png", teach_image("bright", seed=77))
    bright.append(save_png(tmp_path / "bright-camera.png", teach_image("bright", seed=5, size=1600)))  # a camera's
    video = _stripes_video(tmp_path / "stripes.mp4")
    question = save_png(tmp_path / "question.png", teach_image("stripes", seed=4242))

    with live_server(create_app(project, engine="torch", token="s3cret", watch_s=0.5)) as url:
        context, page = _phone(browser)
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(f"{url}/?token=s3cret")
        expect(page.locator("#model")).to_contain_text("2 classes")
        expect(page.locator("#teach")).to_be_visible()
        expect(page.locator("#train-button")).to_be_visible()

        # "wrong? it is …": a bright photo the digits model calls 0 or 1 is saved as "bright"
        page.set_input_files("#file", str(misread))
        expect(page.locator("#results li")).to_have_count(2)
        expect(page.locator("#correct")).to_be_visible()
        page.fill("#correct-class", "bright")
        page.click("#correct-save")
        expect(page.locator("#status")).to_contain_text("1 photo of “bright” saved for the next round")

        # teach: a new class from photos, another from a short video (frames extracted on the server)
        page.fill("#teach-class", "bright")
        page.set_input_files("#teach-files", [str(p) for p in bright])
        expect(page.locator("#teach-status")).to_contain_text("5 photos of “bright” saved")
        page.fill("#teach-class", "stripes")
        page.set_input_files("#teach-video", str(video))
        expect(page.locator("#teach-status")).to_contain_text("of “stripes” saved from the video")
        expect(page.locator('#counts tr[data-class="bright"]')).to_contain_text("6 photos to learn")
        expect(page.locator('#counts tr[data-class="stripes"]')).to_contain_text("(new)")
        page.screenshot(path=str(shots / "phone-teach.png"), full_page=True)

        # train the next round from the page; progress shows while predictions go on
        page.click("#train-button")
        state = page.locator("#train-state")
        expect(state).to_have_attribute("data-state", "training")
        detail = page.locator("#train-detail")
        expect(detail).to_contain_text("validation", timeout=180_000)  # an epoch ended: its accuracy shows
        page.locator("#train").scroll_into_view_if_needed()
        page.screenshot(path=str(shots / "phone-training.png"))
        page.set_input_files("#file", str(question))  # answered by round 1 while round 2 trains
        expect(page.locator("#timing")).to_contain_text("1-digits-")
        expect(state).to_have_attribute("data-state", "promoted", timeout=240_000)
        expect(page.locator("#model")).to_contain_text("4 classes")
        expect(detail).to_contain_text("epoch 4 of 4")
        page.screenshot(path=str(shots / "phone-promoted.png"), full_page=True)

        # the promoted round is served: the new class is predicted for a new photo of it
        page.set_input_files("#file", str(question))
        expect(page.locator("#timing")).to_contain_text("2-phone-2-")
        expect(page.locator("#results li").first).to_have_attribute("data-class", "stripes")
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(shots / "phone-new-class.png"))
        width = page.evaluate("document.documentElement.scrollWidth")
        context.close()
    assert errors == []
    assert width <= 390, "the page must fit a phone's width without sideways scrolling"
    assert graft.load(project).classes == ["0", "1", "bright", "stripes"]
    bright_sizes = sorted(Image.open(path).size for path in (project / "samples" / "phone-2").glob("*/bright/*.png"))
    assert bright_sizes == [(32, 32)] * 5 + [(1024, 1024)]  # the page scaled the camera-sized photo down
