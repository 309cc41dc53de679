"""Helpers for the serving tests: a real uvicorn server in a thread, digit images in every file flavour."""

from __future__ import annotations

import contextlib
import io
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator

import numpy as np
from PIL import Image


@contextlib.contextmanager
def live_server(app) -> Iterator[str]:
    """Run `app` with uvicorn on a free loopback port in a thread; yield its base URL; stop it afterwards."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    # log_config=None: uvicorn's default runs logging.config.dictConfig, which shuts down every handler in the
    # process, and absl's (imported with Keras at collection) then closes pytest's capture file (test_std_streams).
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, log_config=None))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def slow(run, seconds: float):
    """An engine that takes `seconds` longer per batch and records the batch sizes it saw."""

    def engine(batch):
        engine.sizes.append(len(batch))
        time.sleep(seconds)
        return run(batch)

    engine.sizes = []
    return engine


def digit(index: int = 0, scale: int = 4) -> tuple[np.ndarray, str]:
    """A scikit-learn test digit as an upscaled HxW uint8 array, with its label.

    The tiny test model is sure of test digits 2, 3 and 7 (a 2, a 4, a 3); it gets 0 wrong.
    """
    from graft.data import load_splits

    test = load_splits("digits").test
    pixels = test.image(index)[:, :, 0]
    return np.kron(pixels, np.ones((scale, scale), dtype=np.uint8)), test.classes[test.labels[index]]


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def image_flavours(gray: np.ndarray) -> dict[str, bytes]:
    """The same digit as PNG, JPEG with EXIF rotation, RGBA, palette, 16-bit and CMYK JPEG files."""
    rgb = np.repeat(gray[:, :, None], 3, axis=2)
    rgb[:, :, 0] = np.minimum(255, rgb[:, :, 0].astype(int) + 40)  # a little colour, so channels differ
    rgba = np.concatenate([rgb, np.full((*gray.shape, 1), 200, np.uint8)], axis=2)
    rgba[: gray.shape[0] // 4, :, 3] = 0  # a transparent band: composited onto white
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways, shown upright
    return {
        "png": encode(Image.fromarray(gray)),
        "jpeg_exif_rotated": encode(Image.fromarray(np.rot90(rgb, 1).copy()), "JPEG", quality=92, exif=exif),
        "rgba": encode(Image.fromarray(rgba, "RGBA")),
        "palette": encode(Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)),
        "16bit": encode(Image.fromarray(gray.astype(np.uint16) * 257)),
        "cmyk_jpeg": encode(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=92),
    }


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares `width`×`height` pixels and holds none: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")
