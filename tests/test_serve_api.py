"""The HTTP API on a real uvicorn server (httpx): predictions, every client mistake as a 4xx JSON reason, token,
overload, timeout, and reloading a bundle while requests are in flight."""

from __future__ import annotations

import asyncio
import shutil

import httpx
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import graft
from graft.serve import create_app
from serve_helpers import digit, encode, live_server, png_header_only, slow


@pytest.fixture(scope="module")
def digit_png() -> tuple[bytes, str]:
    pixels, label = digit(3)  # a 4 the tiny model is sure of
    return encode(Image.fromarray(pixels)), label


@pytest.fixture(scope="module")
def server(serve_bundle):
    """One server with small limits, shared by the tests that do not change it."""
    app = create_app(serve_bundle, engine="torch", max_upload_mb=0.05, max_pixels=1_000_000)
    with live_server(app) as url:
        yield url


def _post(url: str, **kwargs) -> httpx.Response:
    return httpx.post(f"{url}/v1/predict", timeout=30, **kwargs)


def _assert_problem(response: httpx.Response, status: int, code: str, words: str = "") -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["code"] == code and isinstance(body["detail"], str) and "\n" not in body["detail"]
    assert words.lower() in body["detail"].lower()


def test_predict_raw_body_and_multipart_agree_with_the_bundle(server, serve_bundle, digit_png):
    data, label = digit_png
    raw = _post(server, content=data, headers={"content-type": "image/png"}, params={"top_k": 3})
    form = _post(server, files={"file": ("digit.png", data, "image/png")})
    assert raw.status_code == 200 and form.status_code == 200
    raw_body, form_body = raw.json(), form.json()
    assert [t["class"] for t in raw_body["top"]] == [t["class"] for t in form_body["top"]][:3]
    assert len(raw_body["top"]) == 3 and len(form_body["top"]) == 5  # the default top_k
    assert raw_body["top"][0]["class"] == label
    offline = graft.load(serve_bundle).predict(data, top_k=3)[0]
    assert [t["probability"] for t in raw_body["top"]] == offline.probabilities
    assert raw_body["engine"] == "torch"
    assert raw_body["model"].startswith("digits-") and len(raw_body["model"]) == len("digits-") + 12
    latency = raw_body["latency_ms"]
    assert latency["batch_size"] == 1 and latency["total"] >= latency["inference"] >= 0
    # curl --data-binary sends form-urlencoded; the body is still the image
    curl_like = _post(server, content=data, headers={"content-type": "application/x-www-form-urlencoded"})
    assert curl_like.status_code == 200 and curl_like.json()["top"][0]["class"] == label
    # top_k can also be a form field
    assert len(_post(server, files={"file": ("d.png", data)}, data={"top_k": "2"}).json()["top"]) == 2


def test_model_health_ready_docs_and_page(server, serve_bundle):
    info = httpx.get(f"{server}/v1/model").json()
    bundle = graft.load(serve_bundle)
    assert info["classes"] == bundle.classes and info["input"]["size"] == list(bundle.spec.size)
    assert info["metrics"]["test_acc"] == bundle.metrics["test_acc"] and "provenance" in info
    assert info["engine"] == "torch" and info["export"]["usable"] is True
    assert info["limits"]["max_pixels"] == 1_000_000 and info["limits"]["token"] is False
    assert httpx.get(f"{server}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{server}/readyz").json()
    assert ready["status"] == "ready" and ready["model"] == info["model"]
    assert httpx.get(f"{server}/docs").status_code == 404  # --docs is off by default (CDN scripts)
    assert httpx.get(f"{server}/openapi.json").status_code == 200
    paths = httpx.get(f"{server}/openapi.json").json()["paths"]
    assert {"/v1/predict", "/v1/model", "/v1/reload", "/healthz", "/readyz"} <= set(paths)
    assert "multipart/form-data" in paths["/v1/predict"]["post"]["requestBody"]["content"]
    page = httpx.get(f"{server}/")
    assert page.status_code == 200 and 'capture="environment"' in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert "http://" not in page.text and "https://" not in page.text  # nothing fetched from elsewhere


@pytest.mark.parametrize(
    ("send", "status", "code", "words"),
    [
        ({"content": b""}, 400, "empty_upload", "empty upload"),
        ({"content": b"hello, not a picture"}, 422, "not_an_image", "not a recognised image format"),
        ({"files": {"photo": ("d.png", b"...")}}, 422, "missing_file", "field 'file' (got: photo)"),
        ({"files": {"top_k": (None, "3")}}, 422, "missing_file", "(got: top_k)"),
        ({"content": b"x", "headers": {"content-type": "multipart/form-data"}}, 400, "bad_request", "boundary"),
        ({"content": b"x" * 60_000}, 413, "upload_too_large", "--max-upload-mb"),
        ({"content": iter([b"x" * 30_000, b"x" * 30_000])}, 413, "upload_too_large", "limit"),  # chunked
        ({"content": png_header_only(8000, 8000)}, 413, "image_too_large", "8000x8000"),  # our limit
        ({"content": png_header_only(100_000, 100_000)}, 413, "image_too_large", "decompression bomb"),  # Pillow's
        ({"content": b"x", "params": {"top_k": "0"}}, 422, "invalid_request", "top_k"),
        ({"content": b"x", "params": {"top_k": "many"}}, 422, "invalid_request", "top_k"),
    ],
)
def test_client_mistakes_are_4xx_with_a_json_reason(server, send, status, code, words):
    _assert_problem(_post(server, **send), status, code, words)


def test_truncated_image_and_wrong_form_top_k(server, digit_png):
    data, _ = digit_png
    _assert_problem(_post(server, content=data[: len(data) // 2]), 422, "not_an_image", "truncated")
    bad_k = _post(server, files={"file": ("d.png", data)}, data={"top_k": "-1"})
    _assert_problem(bad_k, 422, "invalid_request", "top_k")
    _assert_problem(httpx.get(f"{server}/v1/predict"), 405, "method_not_allowed")
    _assert_problem(httpx.get(f"{server}/nothing"), 404, "not_found")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=2000), content_type=st.sampled_from(["image/png", "image/jpeg", "", "text/plain"]))
def test_random_bodies_never_give_a_5xx(server, body, content_type):
    response = _post(server, content=body, headers={"content-type": content_type} if content_type else {})
    assert response.status_code < 500, response.text
    assert "detail" in response.json() or "top" in response.json()


def test_token_is_required_for_predict_model_and_reload(serve_bundle, digit_png):
    data, _ = digit_png
    with live_server(create_app(serve_bundle, engine="torch", token="s3cret")) as url:
        for response in (
            _post(url, content=data),
            _post(url, content=data, headers={"authorization": "Bearer wrong"}),
            _post(url, content=data, headers={"authorization": "s3cret"}),
            httpx.get(f"{url}/v1/model"),
            httpx.post(f"{url}/v1/reload"),
        ):
            _assert_problem(response, 401, "unauthorized")
            assert response.headers["www-authenticate"] == "Bearer"
        good = {"authorization": "Bearer s3cret"}
        assert _post(url, content=data, headers=good).status_code == 200
        assert httpx.get(f"{url}/v1/model", headers=good).json()["limits"]["token"] is True
        assert httpx.post(f"{url}/v1/reload", headers=good, timeout=30).status_code == 200
        for open_path in ("/", "/healthz", "/readyz", "/openapi.json"):
            assert httpx.get(f"{url}{open_path}").status_code == 200


def test_reload_from_another_machine_needs_a_token(serve_bundle):
    app = create_app(serve_bundle, engine="torch")

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=("192.168.1.20", 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://192.168.1.10:8000") as client:
            return await client.post("/v1/reload")

    _assert_problem(asyncio.run(go()), 403, "forbidden", "--token")


def test_overload_is_503_with_retry_after(serve_bundle, digit_png):
    data, _ = digit_png
    app = create_app(serve_bundle, engine="torch", max_queue=1, max_batch=1)
    engine = slow(app.state.holder.current.batcher.run, 1.0)
    app.state.holder.current.batcher.run = engine

    async def go(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            first = asyncio.create_task(client.post("/v1/predict", content=data))
            while not engine.sizes:  # the first request is being run
                await asyncio.sleep(0.01)
            second = await client.post("/v1/predict", content=data)
            return [await first, second]

    with live_server(app) as url:
        first, second = asyncio.run(go(url))
        assert first.status_code == 200
        _assert_problem(second, 503, "overloaded", "--max-queue 1")
        assert second.headers["retry-after"] == "1"
        assert _post(url, content=data).status_code == 200  # the queue has room again


def test_request_timeout_is_504(serve_bundle, digit_png):
    data, _ = digit_png
    app = create_app(serve_bundle, engine="torch", timeout_s=0.3)
    app.state.holder.current.batcher.run = slow(app.state.holder.current.batcher.run, 1.0)
    with live_server(app) as url:
        _assert_problem(_post(url, content=data), 504, "timeout", "0.3 s")
        assert app.state.admission.active == 0


def test_concurrent_requests_share_batches(serve_bundle):
    images = [encode(Image.fromarray(digit(i)[0])) for i in range(12)]
    app = create_app(serve_bundle, engine="torch", max_batch=4, max_delay_ms=200)
    engine = slow(app.state.holder.current.batcher.run, 0.05)
    app.state.holder.current.batcher.run = engine

    async def go(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            return await asyncio.gather(*(client.post("/v1/predict", content=d, params={"top_k": 10}) for d in images))

    with live_server(app) as url:
        responses = asyncio.run(go(url))
    assert all(r.status_code == 200 for r in responses)
    assert max(engine.sizes) == 4 and sum(engine.sizes) == 12 and len(engine.sizes) < 12
    offline = graft.load(serve_bundle).predict(images, top_k=10)
    for response, expected in zip(responses, offline, strict=True):
        got = {t["class"]: t["probability"] for t in response.json()["top"]}
        want = dict(zip(expected.classes, expected.probabilities, strict=True))
        assert got.keys() == want.keys()
        assert max(abs(got[c] - want[c]) for c in want) < 1e-5  # batched: same up to float rounding


def _perturbed_copy(source, target) -> graft.Bundle:
    """The same bundle with different weights, saved at `target` (a new model id)."""
    bundle = graft.load(source)
    with torch.no_grad():
        for parameter in bundle.model.parameters():
            parameter.add_(torch.randn_like(parameter) * 1e-3)
    bundle.save(target, overwrite=True)
    return bundle


def test_reload_keeps_every_in_flight_request(serve_bundle, tmp_path, digit_png):
    data, _ = digit_png
    _perturbed_copy(serve_bundle, tmp_path / "round2")
    app = create_app(serve_bundle, engine="torch", max_batch=4, max_delay_ms=20, reload_root=tmp_path)
    app.state.holder.current.batcher.run = slow(app.state.holder.current.batcher.run, 0.05)

    async def go(url: str) -> tuple[list[httpx.Response], httpx.Response, list[httpx.Response]]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            before = [asyncio.create_task(client.post("/v1/predict", content=data)) for _ in range(16)]
            await asyncio.sleep(0.05)
            reload = asyncio.create_task(client.post("/v1/reload", json={"bundle": str(tmp_path / "round2")}))
            during = [asyncio.create_task(client.post("/v1/predict", content=data)) for _ in range(16)]
            responses = await asyncio.gather(*before, *during)
            reloaded = await reload
            after = await asyncio.gather(*(client.post("/v1/predict", content=data) for _ in range(4)))
            return responses, reloaded, after

    with live_server(app) as url:
        old_id = httpx.get(f"{url}/readyz").json()["model"]
        responses, reloaded, after = asyncio.run(go(url))
        assert reloaded.status_code == 200, reloaded.text
        new_id = reloaded.json()["model"]
        assert reloaded.json()["previous"] == old_id and new_id != old_id and new_id.startswith("round2-")
        assert [r.status_code for r in responses] == [200] * 32
        assert {r.json()["model"] for r in responses} <= {old_id, new_id}
        assert responses[0].json()["model"] == old_id
        assert {r.json()["model"] for r in after} == {new_id}
        assert httpx.get(f"{url}/v1/model").json()["model"] == new_id
        # a broken bundle is refused and the current model stays
        (tmp_path / "broken").mkdir()
        failed = httpx.post(f"{url}/v1/reload", json={"bundle": str(tmp_path / "broken")}, timeout=30)
        _assert_problem(failed, 422, "bad_bundle", f"still serving {new_id}")
        assert httpx.get(f"{url}/readyz").json()["model"] == new_id


def test_reload_without_a_path_reads_the_same_directory_again(serve_bundle, tmp_path, digit_png):
    data, _ = digit_png
    path = tmp_path / "live"
    shutil.copytree(serve_bundle, path)
    app = create_app(path)
    with live_server(app) as url:
        first = _post(url, content=data).json()
        assert first["engine"] == "onnx"  # the copy carries its checked export
        _perturbed_copy(path, path)  # a new round writes the directory anew, without an export
        reloaded = httpx.post(f"{url}/v1/reload", timeout=30).json()
        assert reloaded["model"] != first["model"] and reloaded["engine"] == "torch"
        second = _post(url, content=data).json()
        assert second["model"] == reloaded["model"] and second["engine"] == "torch"


def test_model_id_is_stable_for_the_same_weights(serve_bundle, tmp_path):
    from graft.serve.models import model_id

    run_dir = tmp_path / "mnist-run"
    shutil.copytree(serve_bundle, run_dir / "bundle")
    assert model_id(graft.load(serve_bundle)) == model_id(graft.load(serve_bundle))
    same_weights = model_id(graft.load(run_dir / "bundle"))
    assert same_weights.startswith("mnist-run-") and same_weights[-12:] == model_id(graft.load(serve_bundle))[-12:]


def test_settings_are_checked_before_serving(serve_bundle):
    for bad, words in (
        ({"max_batch": 0}, "--max-batch"),
        ({"max_delay_ms": -1}, "--max-delay-ms"),
        ({"engine": "tensorrt"}, "unknown engine"),
        ({"token": "  "}, "--token is empty"),
    ):
        with pytest.raises(graft.GraftError, match=words):
            create_app(serve_bundle, **bad)


def test_loopback_rule():
    from graft.serve.limits import is_loopback

    assert all(map(is_loopback, ["127.0.0.1", "127.8.9.1", "::1", "localhost"]))
    assert not any(map(is_loopback, ["192.168.1.2", "10.0.0.1", "::ffff:8.8.8.8", "", None, "testclient"]))


def test_arrays_still_predict_offline(serve_bundle):
    """Bundle.predict after the split into logits/rank: arrays, bytes and batches as before."""
    bundle = graft.load(serve_bundle)
    pixels, label = digit(3)
    by_array = bundle.predict(pixels[:, :, None], top_k=2)[0]
    by_bytes = bundle.predict(encode(Image.fromarray(pixels)), top_k=2)[0]
    assert by_array.classes == by_bytes.classes and by_array.classes[0] == label
    assert np.allclose(by_array.probabilities, by_bytes.probabilities)
