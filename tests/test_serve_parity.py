"""Served and offline predictions are the same: one preprocessing path, from the bundle's spec.

Every image flavour a phone or a folder can hold (PNG, JPEG with EXIF rotation, RGBA, palette, 16-bit, CMYK JPEG)
goes through HTTP and through `Bundle.predict`; with the same engine the probabilities are identical, and ONNX
Runtime stays within 1e-4 of PyTorch.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

import graft
from graft.serve import create_app
from serve_helpers import digit, image_flavours, live_server

FLAVOURS = ("png", "jpeg_exif_rotated", "rgba", "palette", "16bit", "cmyk_jpeg")


@pytest.fixture(scope="module")
def images() -> dict[str, bytes]:
    """Every flavour of three different digits."""
    found = {}
    for index in (2, 3, 7):
        pixels, label = digit(index)
        for flavour, data in image_flavours(pixels).items():
            found[f"{flavour}-{index}-{label}"] = data
    assert {name.split("-")[0] for name in found} == set(FLAVOURS)
    return found


def _served(url: str, images: dict[str, bytes], *, together: bool = False) -> dict[str, dict]:
    """POST every image (one after another, or all at once) and return {name: {class: probability}}."""

    async def post_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            calls = [client.post("/v1/predict", content=data, params={"top_k": 10}) for data in images.values()]
            if together:
                return await asyncio.gather(*calls)
            return [await call for call in calls]

    responses = asyncio.run(post_all())
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    return {
        name: {"engine": r.json()["engine"], **{t["class"]: t["probability"] for t in r.json()["top"]}}
        for name, r in zip(images, responses, strict=True)
    }


def _offline(bundle: graft.Bundle, images: dict[str, bytes]) -> dict[str, dict]:
    """`graft predict`'s path, one image per call (batch size 1, as the unbatched server runs them)."""
    found = {}
    for name, data in images.items():
        prediction = bundle.predict(data, top_k=10)[0]
        found[name] = dict(zip(prediction.classes, prediction.probabilities, strict=True))
    return found


def test_http_equals_offline_with_the_same_engine(serve_bundle, images):
    bundle = graft.load(serve_bundle)
    with live_server(create_app(serve_bundle, engine="torch", max_batch=1)) as url:
        served = _served(url, images)
    offline = _offline(bundle, images)
    for name in images:
        assert served[name].pop("engine") == "torch"
        assert served[name] == offline[name], name  # identical floats, not just close
    tops = {name: max(probs, key=probs.get) for name, probs in offline.items()}
    assert sum(tops[name] == name.rsplit("-", 1)[1] for name in images) >= len(images) - 3


def test_onnx_engine_within_1e_4_of_pytorch(serve_bundle, images):
    record = graft.info(serve_bundle)["exports"]["onnx"]
    assert record["passed"] and record["max_abs_logit_delta"] <= 1e-4
    with live_server(create_app(serve_bundle)) as url:  # auto: the checked export is used
        served = _served(url, images)
    offline = _offline(graft.load(serve_bundle), images)
    for name in images:
        assert served[name].pop("engine") == "onnx"
        assert served[name].keys() == offline[name].keys()
        assert max(abs(served[name][c] - offline[name][c]) for c in offline[name]) <= 1e-4, name


def test_batched_serving_matches_offline(serve_bundle, images):
    with live_server(create_app(serve_bundle, engine="torch", max_batch=8, max_delay_ms=50)) as url:
        served = _served(url, images, together=True)
    offline = _offline(graft.load(serve_bundle), images)
    for name in images:
        served[name].pop("engine")
        assert max(abs(served[name][c] - offline[name][c]) for c in offline[name]) <= 1e-5, name
