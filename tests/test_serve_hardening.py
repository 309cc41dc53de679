"""Hostile clients against `graft serve` (issue 14): odd form values, hang-ups, uploads on disk, silly flags,
idle and trickling connections, dual-stack loopback, timeouts that must stop the work, DNS rebinding, the docs'
CDN scripts, reload probing, tokens in the access log, ONNX Runtime telemetry and the headers of JSON answers.

Each server here runs in a thread of the test process with uvicorn's logging left to pytest (`log_config=None`),
so `caplog` sees what `graft serve` would print."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from cli_helpers import run_cli as cli
from graft.serve import ServeSettings, create_app
from graft.serve.limits import is_loopback
from graft.serve.run import bind, on_sighup, redact, uvicorn_config
from serve_helpers import digit, encode


@contextlib.contextmanager
def running(app, sock: socket.socket | None = None, **config) -> Iterator[tuple[str, int]]:
    """`app` on uvicorn as `graft serve` configures it (header deadline, connection cap), in a thread; yields
    (base URL, port)."""
    import uvicorn

    if sock is None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
    server = uvicorn.Server(uvicorn_config(app, app.state.settings, log_config=None, **config))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the test server did not start"
        time.sleep(0.01)
    port = sock.getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", port
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@pytest.fixture(scope="module")
def digit_png() -> bytes:
    return encode(Image.fromarray(digit(3)[0]))


@pytest.fixture(scope="module")
def server(serve_bundle):
    with running(create_app(serve_bundle, engine="torch")) as (url, port):
        yield url, port


def _is_problem(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert isinstance(body["detail"], str) and "\n" not in body["detail"]
    if code is not None:
        assert body["code"] == code, body
    return body


def _no_crash_logged(caplog) -> None:
    for record in caplog.records:
        assert record.exc_info is None, f"traceback logged: {record.getMessage()}"
        assert "unexpected error" not in record.getMessage() and "Exception in ASGI" not in record.getMessage()


def _raw(port: int, data: bytes, host: str = "127.0.0.1", family: int = socket.AF_INET) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect((host, port))
    if data:
        sock.sendall(data)
    return sock


def _closed_within(sock: socket.socket, seconds: float) -> bytes | None:
    """What the server sent before closing `sock`, or None when it was still open after `seconds`."""
    sock.settimeout(seconds)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return received


# 2. Client-controlled values: never a 500.


def test_odd_top_k_values_and_headers_are_4xx_not_500(server, digit_png, caplog):
    url, port = server
    caplog.set_level(logging.INFO)
    for value in ("²", "٣", "9" * 5000, "0", "-1", "1.5", " 3", "1e3", "100001"):
        form = httpx.post(f"{url}/v1/predict", files={"file": ("d.png", digit_png)}, data={"top_k": value})
        if len(value) < 1000:
            _is_problem(form, 422, "invalid_request")
        else:  # a form field that long is refused by the multipart parser's own limit
            _is_problem(form, 400, "bad_request")
        if value != " 3":  # pydantic strips spaces around a query number
            query = httpx.post(f"{url}/v1/predict", content=digit_png, params={"top_k": value})
            _is_problem(query, 422, "invalid_request")
    assert (
        len(httpx.post(f"{url}/v1/predict", files={"file": ("d.png", digit_png)}, data={"top_k": "2"}).json()["top"])
        == 2
    )
    # header values a client controls: a non-ASCII or 5000-digit Content-Length, a boundary-less multipart
    for length in ("²".encode(), b"9" * 5000):
        sock = _raw(port, b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: " + length + b"\r\n\r\n")
        answer = _closed_within(sock, 5) or b""
        assert answer.startswith(b"HTTP/1.1 4"), answer[:80]
    odd_types = ("multipart/form-data", "multipart/form-data; boundary=", "multipart/form-data; boundary=" + "x" * 300)
    for kind in odd_types:
        response = httpx.post(f"{url}/v1/predict", content=b"--x\r\n\r\n", headers={"content-type": kind})
        assert 400 <= response.status_code < 500, (kind, response.text)
    _no_crash_logged(caplog)


# 5. A client hanging up mid-upload.


def test_a_client_hanging_up_mid_upload_logs_one_quiet_line(server, digit_png, caplog):
    _, port = server
    caplog.set_level(logging.DEBUG)
    head = b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\nContent-Length: 200000\r\n\r\n"
    sock = _raw(port, head + digit_png[:500])
    time.sleep(0.2)
    sock.close()
    deadline = time.monotonic() + 5
    while not any("hung up" in r.getMessage() for r in caplog.records) and time.monotonic() < deadline:
        time.sleep(0.05)
    _no_crash_logged(caplog)
    lines = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert len(lines) == 1 and "hung up" in lines[0].getMessage(), [r.getMessage() for r in lines]


# 6. Uploads stay in memory.


def test_a_multipart_upload_over_a_megabyte_never_reaches_disk(serve_bundle, monkeypatch):
    noise = np.random.default_rng(0).integers(0, 256, (1100, 1100), dtype=np.uint8)
    big = encode(Image.fromarray(noise))
    assert len(big) > 1_100_000  # starlette spools a file part over 1 MB to a temporary file

    def no_disk(*args, **kwargs):
        raise AssertionError("an upload was written to a temporary file")

    for name in ("TemporaryFile", "NamedTemporaryFile", "mkstemp"):
        monkeypatch.setattr(tempfile, name, no_disk)
    with running(create_app(serve_bundle, engine="torch", max_upload_mb=4)) as (url, _):
        response = httpx.post(f"{url}/v1/predict", files={"file": ("noise.png", big, "image/png")}, timeout=30)
    assert response.status_code == 200, response.text


# 7. Every numeric flag has a range.


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--timeout", "inf"),
        ("--timeout", "nan"),
        ("--max-upload-mb", "inf"),
        ("--max-upload-mb", "1e-9"),
        ("--max-delay-ms", "inf"),
        ("--max-delay-ms", "-1"),
        ("--watch", "1e-9"),
        ("--max-batch", "0"),
        ("--max-batch", "100000"),
        ("--max-queue", "0"),
        ("--max-pixels", "0"),
        ("--threads", "0"),
        ("--decode-threads", "0"),
        ("--header-timeout", "0"),
        ("--max-connections", "0"),
    ],
)
def test_numeric_flags_outside_their_range_are_one_line_errors(tmp_path, flag, value, capsys):
    # the flags are checked before the bundle is looked at (were they not, this would say "not a bundle")
    code, _, err = cli(["serve", str(tmp_path / "no-bundle"), "--port", "0", flag, value], capsys)
    assert code == 2 and flag in err and " must be " in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_settings_check_their_ranges():
    assert ServeSettings().validate().max_upload_bytes == 20 * 2**20
    assert ServeSettings(watch_s=0).validate().watch_s == 0  # 0 is "off", not out of range
    for bad in ({"max_upload_mb": 1e-9}, {"timeout_s": float("inf")}, {"max_delay_ms": float("nan")}):
        with pytest.raises(Exception, match="must be"):
            ServeSettings(**bad).validate()


# 9. Header deadline and connection cap.


def test_idle_and_trickling_connections_are_dropped_and_capped(serve_bundle, digit_png):
    app = create_app(serve_bundle, engine="torch", header_timeout_s=0.5, max_connections=4)
    with running(app) as (url, port):
        started = time.monotonic()
        silent = _raw(port, b"")
        trickling = _raw(port, b"GET /healthz HTTP/1.1\r\nHo")
        with pytest.raises((BrokenPipeError, ConnectionResetError)):  # a byte every 50 ms: cut off at 0.5 s
            for byte in b"st: 127.0.0.1\r\n" + b"X-Slow: " + b"y" * 200:
                trickling.sendall(bytes([byte]))
                time.sleep(0.05)
        assert 0.4 < time.monotonic() - started < 2
        assert _closed_within(silent, 2) == b""
        assert _closed_within(trickling, 2) == b""
        assert time.monotonic() - started < 3
        # a kept-alive connection gets the deadline again after each response
        with httpx.Client() as client:
            assert client.get(f"{url}/healthz").status_code == 200
            assert client.post(f"{url}/v1/predict", content=digit_png).status_code == 200
        # the cap: four open connections, the fifth is answered 503 and closed
        idle = [_raw(port, b"") for _ in range(4)]
        time.sleep(0.1)
        fifth = _closed_within(_raw(port, b""), 2)
        assert fifth is not None and fifth.startswith(b"HTTP/1.1 503") and b'"overloaded"' in fifth
        for sock in idle:
            assert _closed_within(sock, 2) == b""  # dropped at the header deadline, so the server is free again
        assert httpx.get(f"{url}/healthz").status_code == 200


def test_a_trickled_body_is_cut_off_at_the_timeout(serve_bundle):
    # FastAPI reads a JSON body before the route's checks run: without a body deadline, anyone could hold a
    # connection forever by trickling the body of POST /v1/reload
    app = create_app(serve_bundle, engine="torch", timeout_s=0.5, header_timeout_s=0.5)
    with running(app) as (_, port):
        started = time.monotonic()
        head = b"POST /v1/reload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        sock = _raw(port, head + b"Content-Length: 100\r\n\r\n{")
        answer = _closed_within(sock, 3)
        assert answer is not None and answer.startswith(b"HTTP/1.1 4"), answer
        assert time.monotonic() - started < 3  # --timeout + 1 s
        sock = _raw(port, b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\nabc")
        answer = _closed_within(sock, 3)  # predict's own --timeout covers its upload
        assert answer is not None and answer.startswith(b"HTTP/1.1 504") and b'"timeout"' in answer, answer


def test_a_slow_request_is_not_cut_by_the_header_deadline(serve_bundle, digit_png):
    from serve_helpers import slow

    app = create_app(serve_bundle, engine="torch", header_timeout_s=0.2, max_batch=1)
    loaded = app.state.holder.current
    loaded.batcher.run = slow(loaded.batcher.run, 0.6)
    with running(app) as (url, _):
        response = httpx.post(f"{url}/v1/predict", content=digit_png, timeout=10)
    assert response.status_code == 200, response.text


# 10. Dual-stack loopback.


def test_ipv4_mapped_loopback_is_loopback():
    assert is_loopback("::ffff:127.0.0.1") and is_loopback("::ffff:127.8.9.1") and is_loopback("::1")
    assert not is_loopback("::ffff:192.168.1.20") and not is_loopback("::ffff:10.0.0.1") and not is_loopback("fe80::1")


def test_a_local_ipv4_client_of_a_dual_stack_server_may_reload(serve_bundle):
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        sock = bind("::", 0)
    except Exception as error:
        pytest.skip(f"cannot listen on [::]: {error}")
    with running(create_app(serve_bundle, engine="torch"), sock=sock) as (_, port):
        response = httpx.post(f"http://127.0.0.1:{port}/v1/reload", timeout=30)  # arrives as ::ffff:127.0.0.1
    assert response.status_code == 200, response.text


# 1 (serve part). A timeout stops the work and keeps the admission place until it has stopped.


def test_a_timed_out_request_stops_its_work_and_holds_its_place_until_then(serve_bundle, digit_png, monkeypatch):
    import graft.bundle
    import graft.data.images

    real_decode, real_preprocess = graft.data.images.decode_image, graft.bundle.to_model_input
    preprocessed = []

    def decode(source, **kwargs):
        if isinstance(source, bytes) and source.startswith(b"slow"):
            time.sleep(1.0)
            return np.zeros((8, 8), np.uint8)
        return real_decode(source, **kwargs)

    def preprocess(*args, **kwargs):
        preprocessed.append(1)
        return real_preprocess(*args, **kwargs)

    monkeypatch.setattr(graft.data.images, "decode_image", decode)
    monkeypatch.setattr(graft.bundle, "to_model_input", preprocess)
    app = create_app(serve_bundle, engine="torch", timeout_s=0.3, max_queue=1, decode_threads=1)
    with running(app) as (url, _):
        started = time.monotonic()
        _is_problem(httpx.post(f"{url}/v1/predict", content=b"slow image", timeout=10), 504, "timeout")
        assert time.monotonic() - started < 0.9
        # the decode still runs: its place is still taken, so the next request is refused rather than piling up
        _is_problem(httpx.post(f"{url}/v1/predict", content=digit_png, timeout=10), 503, "overloaded")
        time.sleep(1.0)
        assert preprocessed == []  # the timed-out request never reached preprocessing (nor the batcher)
        assert app.state.admission.active == 0
        assert httpx.post(f"{url}/v1/predict", content=digit_png, timeout=10).status_code == 200
        assert preprocessed == [1]


def test_a_sighup_reload_that_fails_logs_one_line_and_leaves_no_orphan_task_error(caplog):
    class Holder:
        current = type("Loaded", (), {"model_id": "digits-0123456789ab"})()

        def __init__(self, error: Exception) -> None:
            self.error = error

        async def reload(self):
            raise self.error

    async def go() -> list[BaseException | None]:
        tasks = [on_sighup(Holder(error)) for error in (PermissionError("model.safetensors: denied"), OSError("x"))]
        await asyncio.gather(*tasks)
        return [task.exception() for task in tasks]

    caplog.set_level(logging.ERROR)
    assert asyncio.run(go()) == [None, None]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and all(line.startswith("reload failed, still serving digits-") for line in lines)
    _no_crash_logged(caplog)


# Security: DNS rebinding.


def test_requests_for_another_host_name_are_refused(serve_bundle):
    with running(create_app(serve_bundle, engine="torch", allowed_hosts=("phone-server.lan",))) as (url, port):
        for host in ("evil.example", "evil.example:80", f"attacker.test:{port}", "localhost.evil.example"):
            for method, path in (("GET", "/v1/model"), ("POST", "/v1/reload"), ("GET", "/")):
                response = httpx.request(method, f"{url}{path}", headers={"host": host})
                body = _is_problem(response, 421, "unknown_host")
                assert "--allowed-host" in body["detail"]
        for host in (
            f"127.0.0.1:{port}",
            f"localhost:{port}",
            f"[::1]:{port}",
            "192.168.1.20:8000",
            "phone-server.lan",
        ):
            assert httpx.get(f"{url}/v1/model", headers={"host": host}).status_code == 200, host
    with running(create_app(serve_bundle, engine="torch", allowed_hosts=("*",))) as (url, _):
        assert httpx.get(f"{url}/v1/model", headers={"host": "any.example"}).status_code == 200


# Security: /docs and /redoc load CDN scripts on the token's origin.


def test_docs_are_off_by_default_and_fenced_by_a_policy_when_on(serve_bundle, server):
    url, _ = server
    for path in ("/docs", "/redoc"):
        _is_problem(httpx.get(f"{url}{path}"), 404, "not_found")
    assert httpx.get(f"{url}/openapi.json").status_code == 200  # the schema itself runs nothing
    with running(create_app(serve_bundle, engine="torch", docs=True)) as (docs_url, _):
        for path in ("/docs", "/redoc"):
            response = httpx.get(f"{docs_url}{path}")
            policy = response.headers["content-security-policy"]
            assert response.status_code == 200 and "default-src 'none'" in policy
            assert "https://cdn.jsdelivr.net" in policy and "connect-src 'self'" in policy and "*" not in policy


# Security: reload paths.


def test_reload_loads_only_bundles_under_its_root_and_says_one_thing_otherwise(serve_bundle, tmp_path):
    root = tmp_path / "runs"
    shutil.copytree(serve_bundle, root / "a")
    shutil.copytree(serve_bundle, root / "b")
    (tmp_path / "outside").mkdir()
    shutil.copytree(serve_bundle, tmp_path / "outside" / "c")
    (root / "notes").mkdir()
    (root / "link").symlink_to(tmp_path / "outside" / "c")
    with running(create_app(root / "a", engine="torch")) as (url, _):
        details = set()
        for path in (
            "/etc",
            "/etc/passwd",
            "/nonexistent",
            str(tmp_path / "outside" / "c"),  # a real bundle, but outside the root
            str(root / ".." / "outside" / "c"),
            str(root / "link"),  # a symlink out of the root
            str(root / "notes"),  # a directory without graft.json
            "a" * 5000,
            "a\x00b",
            "",
        ):
            body = _is_problem(httpx.post(f"{url}/v1/reload", json={"bundle": path}, timeout=30), 422, "bad_bundle")
            details.add(body["detail"])
        assert len(details) == 1, details  # nothing to tell a missing path from a directory without graft.json
        assert httpx.post(f"{url}/v1/reload", json={"bundle": str(root / "b")}, timeout=60).status_code == 200


# Security: tokens in the access log.


def test_the_access_log_redacts_tokens(serve_bundle, caplog):
    assert redact("GET /?token=s3cret&x=1 HTTP/1.1") == "GET /?token=REDACTED&x=1 HTTP/1.1"
    caplog.set_level(logging.INFO)
    with running(create_app(serve_bundle, engine="torch", token="s3cret"), access_log=True) as (
        url,
        _,
    ):
        assert httpx.get(f"{url}/?token=s3cret").status_code == 200
        assert httpx.get(f"{url}/healthz?TOKEN=s3cret").status_code == 200
    logged = [r.getMessage() for r in caplog.records if r.name == "uvicorn.access"]
    assert len(logged) == 2 and all("REDACTED" in line for line in logged), logged
    assert not any("s3cret" in line for line in logged)


# Security: ONNX Runtime telemetry.


def test_onnx_runtime_telemetry_is_turned_off(serve_bundle, monkeypatch, tmp_path):
    import onnxruntime

    calls = []
    monkeypatch.setattr(onnxruntime, "disable_telemetry_events", lambda: calls.append(1), raising=False)
    app = create_app(serve_bundle, engine="onnx")
    assert app.state.holder.current.engine_name == "onnx" and calls
    calls.clear()
    import shutil

    import graft

    copy = tmp_path / "b"
    shutil.copytree(serve_bundle, copy)
    graft.export(copy, format="onnx")  # the export's own parity check runs ONNX Runtime too
    assert calls


# Security: the headers of JSON answers.


def test_json_answers_carry_security_headers(server, digit_png):
    url, _ = server
    page_policy = httpx.get(f"{url}/").headers["content-security-policy"]
    for response in (
        httpx.get(f"{url}/v1/model"),
        httpx.post(f"{url}/v1/predict", content=digit_png),
        httpx.post(f"{url}/v1/predict", content=b"not an image"),
        httpx.get(f"{url}/nowhere"),
        httpx.get(f"{url}/healthz"),
    ):
        assert response.headers["x-content-type-options"] == "nosniff", response.url
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["content-security-policy"].startswith("default-src 'none'")
        assert response.headers["referrer-policy"] == "no-referrer"
    assert "script-src 'unsafe-inline'" in page_policy  # the page keeps its own policy


def test_an_unhandled_exception_500_carries_the_security_headers_too(serve_bundle, caplog):
    """Starlette answers a crash from its outermost middleware, outside `SecurityHeaders`: the 500 must still
    carry the headers (and leak nothing)."""
    from fastapi.testclient import TestClient

    app = create_app(serve_bundle, engine="torch")

    async def crash() -> None:
        raise RuntimeError("secret internals")

    app.add_api_route("/crash", crash)
    with TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False) as client:
        answers = [client.get("/crash"), client.get("/healthz")]
    crashed = answers[0]
    assert _is_problem(crashed, 500, "internal_error") and "secret" not in crashed.text
    for answer in answers:
        assert answer.headers["x-content-type-options"] == "nosniff", answer.url
        assert answer.headers["cache-control"] == "no-store"
        assert answer.headers["content-security-policy"].startswith("default-src 'none'")
        assert answer.headers["referrer-policy"] == "no-referrer"
    assert any("unexpected error" in record.getMessage() for record in caplog.records)


def test_non_finite_scores_are_a_422_not_a_500(serve_bundle, digit_png):
    from fastapi.testclient import TestClient

    app = create_app(serve_bundle, engine="torch")
    loaded = app.state.holder.current
    loaded.bundle.model.forward = lambda batch: torch.full((batch.shape[0], len(loaded.bundle.classes)), math.nan)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        answer = client.post("/v1/predict", content=digit_png)
    assert answer.status_code == 422 and answer.json()["code"] == "no_prediction"


def test_the_default_reload_root_is_the_runs_folder_only_for_a_real_run(tmp_path):
    from types import SimpleNamespace

    from graft.serve.models import reload_root

    run_bundle, plain = tmp_path / "runs" / "x" / "bundle", tmp_path / "home" / "u" / "bundle"
    for path in (run_bundle, plain):
        path.mkdir(parents=True)
    (run_bundle.parent / "config.json").write_text("{}")
    settings = ServeSettings()
    assert reload_root(SimpleNamespace(bundle=SimpleNamespace(path=run_bundle)), settings, None) == tmp_path / "runs"
    # a folder merely named "bundle" does not open its grandparent (all of /home) to reloads
    assert reload_root(SimpleNamespace(bundle=SimpleNamespace(path=plain)), settings, None) == plain.parent
