"""Hostile image files: every one is refused from its header with one line, or decoded within bounded memory.

Issue 14: a thin 1 × 49 000 000 PNG cost the server 7 GB; an ICO holding a large PNG was decoded before the pixel
limit was checked; a 1 KB JPEG claiming 7000² decoded as gray and was answered; a FIFO hung `graft predict`.
"""

from __future__ import annotations

import io
import os
import resource
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from graft.data.image_limits import DEFAULT_MAX_SIDE, ImageLimits, ImageTooLarge, check_jpeg_data
from graft.data.images import decode_image
from graft.errors import GraftError


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def thin_png(width: int, height: int) -> bytes:
    """A valid all-black 1-bit PNG of any shape, compressed row block by row block (never all rows in memory)."""
    row = b"\x00" + bytes((width + 7) // 8)  # filter byte + packed pixels
    per_block = max(1, 1_000_000 // len(row))
    compressor = zlib.compressobj(9)
    blocks, rest = divmod(height, per_block)
    body = b"".join(compressor.compress(row * per_block) for _ in range(blocks))
    body += compressor.compress(row * rest) + compressor.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one_line(error: GraftError, label: str) -> str:
    message = str(error)
    assert message.startswith(f"{label}: ") and "\n" not in message, message
    return message


@pytest.mark.parametrize(("width", "height"), [(1, 49_000_000), (49_000_000, 1), (DEFAULT_MAX_SIDE + 1, 2)])
def test_thin_image_is_refused_from_its_header(width: int, height: int) -> None:
    data = thin_png(width, height)
    assert len(data) < 200_000  # cheap to send ...
    before = rss_mb()
    with pytest.raises(ImageTooLarge) as excinfo:
        decode_image(data, name="thin.png")  # ... and refused by default, before decoding
    assert "side longer than the limit" in one_line(excinfo.value, "thin.png")
    assert rss_mb() - before < 100


def test_longest_side_is_a_limit_of_its_own() -> None:
    data = encode(Image.new("L", (300, 20)), "PNG")
    assert decode_image(data, limits=ImageLimits(max_pixels=None, max_side=300)).shape == (20, 300, 1)
    with pytest.raises(ImageTooLarge):
        decode_image(data, limits=ImageLimits(max_pixels=None, max_side=299))
    assert decode_image(thin_png(DEFAULT_MAX_SIDE + 1, 1), limits=ImageLimits(None, None)).shape[1] == 16385


def ico_holding(png: bytes, claimed: int = 16) -> bytes:
    entry = struct.pack("<BBBBHHII", claimed, claimed, 0, 0, 1, 32, len(png), 22)
    return struct.pack("<HHH", 0, 1, 1) + entry + png


def test_containers_are_refused_before_their_inner_image_is_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import IcoImagePlugin

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("the ICO plugin ran")

    monkeypatch.setattr(IcoImagePlugin.IcoFile, "__init__", never)
    inner = encode(Image.new("RGB", (64, 64)), "PNG")
    with pytest.raises(GraftError) as excinfo:
        decode_image(ico_holding(inner), name="icon.ico")
    assert "ICO images are not accepted" in one_line(excinfo.value, "icon.ico")


@pytest.mark.parametrize(
    ("data", "named"),
    [
        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "EPS"),  # would run Ghostscript
        (b"8BPS\x00\x01" + bytes(40), "PSD"),
    ],
)
def test_formats_outside_the_allow_list_are_named(data: bytes, named: str) -> None:
    with pytest.raises(GraftError) as excinfo:
        decode_image(data, name="x")
    assert f"{named} images are not accepted" in one_line(excinfo.value, "x")


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real 16×16 JPEG whose frame header is edited to claim `width` × `height` (libjpeg fills the rest gray)."""
    data = bytearray(encode(Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), np.uint8)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def test_jpeg_claiming_more_than_its_data_holds_is_corrupt() -> None:
    data = jpeg_claiming(7000, 7000)
    assert Image.open(io.BytesIO(data)).size == (7000, 7000)
    with pytest.raises(GraftError) as excinfo:
        decode_image(data, name="gray.jpg")
    assert "corrupt JPEG" in one_line(excinfo.value, "gray.jpg")
    with pytest.raises(GraftError):  # bytes after the image's end do not count as its data
        decode_image(data + bytes(100_000), name="gray.jpg")
    with pytest.raises(GraftError, match="corrupt JPEG"):  # nor do large segments before its scan
        decode_image(data[:2] + b"\xff\xe1\xff\xff" + bytes(65533) + data[2:], name="gray.jpg")


def test_data_spanning_many_chunks_is_measured_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    import graft.data.image_limits as limits

    monkeypatch.setattr(limits, "_CHUNK", 7)  # markers straddle chunk edges
    rng = np.random.default_rng(3)
    data = encode(Image.fromarray(rng.integers(0, 256, (64, 64, 3), np.uint8)), "JPEG", progressive=True)
    stream = io.BytesIO(data)
    check_jpeg_data(stream, "x")
    monkeypatch.setattr(limits, "_CHUNK", 1 << 20)
    check_jpeg_data(io.BytesIO(jpeg_claiming(64, 64)), "x")  # 16x16 of data claiming 64x64: 16 MCUs, enough bits
    with pytest.raises(GraftError, match="corrupt"):
        check_jpeg_data(io.BytesIO(jpeg_claiming(4000, 4000)), "x")


def test_a_jpeg_with_thousands_of_scans_is_refused() -> None:
    data = encode(Image.fromarray(np.zeros((16, 16, 3), np.uint8)), "JPEG", progressive=True)
    sos = data.index(b"\xff\xda")
    eoi = data.rindex(b"\xff\xd9")
    scans = data[sos:eoi]
    many = data[:sos] + scans * (200 // max(1, scans.count(b"\xff\xda")) + 1) + data[eoi:]
    with pytest.raises(GraftError, match="more than 100 scans"):
        decode_image(many, name="scans.jpg")


@pytest.mark.parametrize(
    ("mode", "options"),
    [
        ("L", {"quality": 1, "optimize": True}),
        ("L", {"progressive": True, "optimize": True}),
        ("RGB", {"progressive": True, "optimize": True, "subsampling": 2}),
        ("RGB", {"quality": 5, "subsampling": 0}),
        ("RGB", {"quality": 50, "restart_marker_blocks": 1}),
    ],
)
def test_valid_but_extremely_compressible_jpegs_pass_the_data_check(mode: str, options: dict) -> None:
    # A uniform image is the least data a real JPEG can hold for its size: the check must never refuse it.
    data = encode(Image.new(mode, (2048, 1536), 200 if mode == "L" else (200, 100, 50)), "JPEG", **options)
    check_jpeg_data(io.BytesIO(data), "x")
    assert decode_image(data).shape[:2] == (1536, 2048)


def test_a_fifo_is_refused_not_waited_on(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(GraftError) as excinfo:
        decode_image(fifo)  # before the fix: blocks forever waiting for a writer
    assert "not a regular file" in one_line(excinfo.value, "pipe.png")


def _seeds() -> list[bytes]:
    rng = np.random.default_rng(1)
    rgb = Image.fromarray(rng.integers(0, 256, (24, 20, 3), np.uint8))
    seeds = [encode(rgb, fmt) for fmt in ("PNG", "JPEG", "GIF", "WEBP", "TIFF", "BMP")]
    seeds += [encode(rgb, "JPEG", progressive=True), encode(rgb.convert("L"), "PNG"), ico_holding(seeds[0])]
    return seeds


SEEDS = _seeds()
FUZZ_LIMITS = ImageLimits(max_pixels=4_000_000, max_side=4096)


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        position = draw(st.integers(0, min(len(data) - 1, 160)))  # headers live near the start
        data[position] = draw(st.integers(0, 255))
    cut = draw(st.one_of(st.none(), st.integers(1, len(data))))
    return bytes(data[:cut])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(mutated_images(), st.binary(min_size=1, max_size=300)))
def test_fuzzed_image_bytes_give_an_array_or_one_line(data: bytes) -> None:
    before = rss_mb()
    try:
        out = decode_image(data, limits=FUZZ_LIMITS, name="fuzz")
    except GraftError as error:  # anything else (a traceback) fails the test
        one_line(error, "fuzz")
    else:
        assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] in (1, 3)
        assert out.shape[0] * out.shape[1] <= FUZZ_LIMITS.max_pixels
    assert rss_mb() - before < 200


def _peak_rss_mb(pid: int) -> float:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmHWM"].split()[0]) / 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the server's peak memory from /proc")
def test_the_server_refuses_a_thin_image_at_once_without_growing(serve_bundle: Path) -> None:
    import subprocess
    import sys
    import time

    import httpx

    from test_serve_cli import _free_port, _wait_ready

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "graft", "serve", str(serve_bundle), "--port", str(port), "--threads", "1"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        _wait_ready(url, process)
        ok = httpx.post(f"{url}/v1/predict", content=encode(Image.new("L", (28, 28)), "PNG"), timeout=30)
        assert ok.status_code == 200  # the model has run once: its memory is in the baseline
        before = _peak_rss_mb(process.pid)
        for data in (thin_png(1, 49_000_000), thin_png(49_000_000, 1)):
            started = time.monotonic()
            answer = httpx.post(f"{url}/v1/predict", content=data, timeout=30)
            assert answer.status_code == 413 and answer.json()["code"] == "image_too_large"
            assert time.monotonic() - started < 1.0
        corrupt = httpx.post(f"{url}/v1/predict", content=jpeg_claiming(7000, 7000), timeout=30)
        assert corrupt.status_code == 422 and "corrupt JPEG" in corrupt.json()["detail"]
        icon = httpx.post(f"{url}/v1/predict", content=ico_holding(encode(Image.new("RGB", (64, 64)), "PNG")))
        assert icon.status_code == 422 and "ICO images are not accepted" in icon.json()["detail"]
        assert _peak_rss_mb(process.pid) - before < 200
    finally:
        process.terminate()
        process.communicate(timeout=30)
