"""The phone page in a real browser: Debian's headless Chromium, driven by Playwright, picks a digit photo and
sees the right class. CI installs the chromium package (.ci/run); Playwright never downloads a browser."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from graft.serve import create_app
from serve_helpers import digit, live_server

try:
    from playwright.sync_api import expect
except ImportError:  # the module is skipped below
    expect = None

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",  # without these Chromium's own connections are refused on a closed network
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.skipif(
    not CHROMIUM.is_file(), reason="needs Debian's Chromium at /usr/bin/chromium (apt-get install chromium)"
)


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    expect.set_options(timeout=30_000)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def _phone(browser):
    """A page the size of a phone, with touch, as a phone's browser would open it."""
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    context.set_default_timeout(30_000)
    return context, context.new_page()


def _digit_file(tmp_path: Path, index: int) -> tuple[Path, str]:
    pixels, label = digit(index, scale=8)
    path = tmp_path / f"digit-{index}.png"
    Image.fromarray(pixels).save(path)
    return path, label


def test_phone_page_classifies_a_picked_photo(browser, serve_bundle, tmp_path):
    path, label = _digit_file(tmp_path, 2)
    with live_server(create_app(serve_bundle)) as url:
        context, page = _phone(browser)
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(f"{url}/")
        expect(page.locator("#model")).to_contain_text("10 classes")  # the page's own script ran under its CSP
        assert page.locator("#camera").get_attribute("capture") == "environment"
        page.set_input_files("#file", str(path))
        top = page.locator("#results li").first
        expect(top).to_have_attribute("data-class", label)
        expect(page.locator("#results li")).to_have_count(5)
        assert "%" in top.inner_text() and "ms on the server" in page.locator("#timing").inner_text()
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, "the page must fit a phone's width without sideways scrolling"
        page.screenshot(path=str(tmp_path / "phone.png"), full_page=True)
        context.close()
        assert errors == []


def test_phone_page_with_a_token_link(browser, serve_bundle, tmp_path):
    path, label = _digit_file(tmp_path, 7)
    with live_server(create_app(serve_bundle, engine="torch", token="s3cret")) as url:
        context, page = _phone(browser)
        page.goto(f"{url}/")  # no token yet: the page asks for one
        expect(page.locator("#model")).to_contain_text("needs a token")
        assert page.locator("#settings").is_visible()
        page.goto(f"{url}/?token=s3cret")  # the link `graft serve --token` prints
        expect(page.locator("#model")).to_contain_text("10 classes")
        assert "token" not in page.url  # kept in the browser, not in the address bar or history
        page.set_input_files("#camera", str(path))
        expect(page.locator("#results li").first).to_have_attribute("data-class", label)
        page.evaluate("localStorage.setItem('graft-token', 'wrong')")
        page.reload()
        page.set_input_files("#file", str(path))
        expect(page.locator("#status")).to_contain_text("needs a token")
        context.close()


def _bundle_with_threshold(serve_bundle: Path, tmp_path: Path, threshold: float) -> Path:
    """A copy of the served bundle whose stored "not sure" threshold is `threshold`."""
    import shutil

    from graft import record

    path = tmp_path / "bundle"
    shutil.copytree(serve_bundle, path)
    confidence = record.ConfidenceRecord(threshold=threshold, source="validation", target_accuracy=0.95, images=100)
    record.update(path, lambda r: r.model_copy(update={"confidence": confidence}))
    return path


def test_phone_page_says_not_sure_below_the_bundles_threshold(browser, serve_bundle, tmp_path):
    import graft

    blank = tmp_path / "blank.png"
    Image.new("RGB", (64, 64), (128, 128, 128)).save(blank)
    unsure = graft.load(serve_bundle).predict(str(blank), top_k=1)[0]
    threshold = min(1.0, unsure.probabilities[0] + 0.02)  # the blank photo's answer is just below it
    with live_server(create_app(_bundle_with_threshold(serve_bundle, tmp_path, threshold))) as url:
        context, page = _phone(browser)
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(f"{url}/")
        knows = page.locator("#knows")
        expect(knows).to_contain_text("Knows only: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9")
        expect(knows).to_contain_text("right on ")  # the bundle's test accuracy
        expect(knows).to_contain_text(f"below {threshold * 100:.1f}\u00a0%")
        assert page.locator("#settings").is_hidden(), "no token section on a server without a token"
        page.set_input_files("#file", str(blank))
        expect(page.locator("#answer")).to_contain_text(f"Not sure: maybe {unsure.classes[0]}")
        expect(page.locator("#results li")).to_have_count(5)
        assert page.locator("#results").get_attribute("class") == "unsure"
        assert knows.is_visible() and page.locator("#answer").is_visible()
        page.screenshot(path=str(tmp_path / "phone-not-sure.png"), full_page=True)
        # An upload the browser cannot show: an error line, and the preview hidden rather than a broken image.
        junk = tmp_path / "not-a-photo.png"
        junk.write_bytes(b"this is text, not a PNG")
        page.set_input_files("#file", str(junk))
        expect(page.locator("#status")).to_have_class("error")
        expect(page.locator("#preview")).to_be_hidden()
        expect(page.locator("#answer")).to_have_text("")
        context.close()
        assert errors == []


def test_phone_page_gives_a_sure_answer_as_the_answer(browser, serve_bundle, tmp_path):
    import graft

    path, label = _digit_file(tmp_path, 2)
    sure = graft.load(serve_bundle).predict(str(path), top_k=1)[0]
    assert sure.classes[0] == label
    threshold = max(0.0, sure.probabilities[0] - 0.02)
    with live_server(create_app(_bundle_with_threshold(serve_bundle, tmp_path, threshold))) as url:
        context, page = _phone(browser)
        page.goto(f"{url}/")
        expect(page.locator("#knows")).to_contain_text("Knows only")
        page.set_input_files("#file", str(path))
        expect(page.locator("#answer")).to_have_text(f"{label} · {sure.probabilities[0] * 100:.1f}\u00a0%")
        assert page.locator("#answer").get_attribute("class") == ""
        context.close()
