"""Decoding one image file into a uint8 array: the only place graft turns bytes into pixels.

`graft predict`, the `folder:` source and the HTTP server all decode through `decode_image`, so an image gives
the same pixels, and hence the same prediction, offline and served. The rules:

- EXIF orientation is applied, so a phone photo is upright as the user sees it.
- The result is HxWxC uint8 with C = 1 for gray-like images ("1", "L", "LA", 16/32-bit gray) and C = 3 for
  everything else (RGB, palette, RGBA, CMYK, YCbCr, LAB, HSV).
- Transparency is composited onto a **white** background (alpha, palette transparency, PNG colour keys):
  transparent pixels are what a viewer shows on a page, and a fixed rule keeps training and serving equal.
- 16-bit gray is scaled to 8 bit as round(value / 257), so 65535 becomes 255; 32-bit integer gray by the
  file's bit depth; float gray is read as [0, 1] when it lies there, else as 0-255, 16-bit or its own range.
- Before a pixel is decoded, the header is held to `graft.data.image_limits`: an allow-list of formats, at most
  `max_pixels` pixels and `max_side` per side (on by default everywhere; `ImageLimits(None, None)` lifts them), and
  a JPEG's data must be long enough for the size it claims.
- Only regular files are opened (a FIFO or device would block or never end).
- Every failure (not an image, empty, truncated, corrupt, too large, unsupported) is a `GraftError` with one line
  naming the file; a truncated file always fails because pixels are fully loaded, never lazily.
"""

from __future__ import annotations

import io
import os
import stat
import threading
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from graft.data.image_limits import (
    DEFAULT_LIMITS,
    ImageLimits,
    ImageTooLarge,
    accepted_formats,
    check_jpeg_data,
    format_refusal,
)
from graft.errors import GraftError

__all__ = ["IMAGE_EXTENSIONS", "ImageLimits", "ImageTooLarge", "decode_image"]

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".bmp")

_GRAY_MODES = ("1", "L")
_GRAY_ALPHA_MODES = ("LA", "La")
_WIDE_GRAY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_ALPHA_MODES = ("RGBA", "RGBa", "PA")
_COLOUR_MODES = ("RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")

# `warnings.catch_warnings` swaps process-wide state; the lock keeps threads that decode at once (the folder
# scan) from restoring each other's filters. Only header parsing runs under it, not pixel decoding.
_OPEN_LOCK = threading.Lock()
# Pillow warns above MAX_IMAGE_PIXELS (~89 M) and refuses above twice that (~179 M). graft's own `limits` decide
# below that ceiling (its header check follows at once), so the warning is silenced rather than made an error:
# otherwise `--no-limits` or `--max-pixels 100000000` would not mean what they say.
_BOMBS = (Image.DecompressionBombError, Image.DecompressionBombWarning)


def decode_image(
    source: str | Path | bytes, *, limits: ImageLimits = DEFAULT_LIMITS, name: str | None = None
) -> np.ndarray:
    """Decode a file path or encoded bytes into an HxWxC uint8 array (C is 1 or 3), by the module's rules.

    `limits` bounds the header before any pixel is decoded. `name` is used in error messages (default: the file's
    name, or "image" for bytes).
    """
    if isinstance(source, bytes):
        label = name or "image"
        if not source:
            raise GraftError(f"{label}: cannot decode image (empty file)")
        return _decode(io.BytesIO(source), label, limits)
    path = Path(source)
    label = name or path.name or str(path)
    try:
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever.
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise GraftError(f"{label}: cannot read file ({exc.strerror or type(exc).__name__})") from None
    status = os.fstat(descriptor)
    if not stat.S_ISREG(status.st_mode):
        os.close(descriptor)
        kind = "a directory" if stat.S_ISDIR(status.st_mode) else "not a regular file"
        raise GraftError(f"{label}: cannot read file ({kind})")
    with os.fdopen(descriptor, "rb") as handle:
        if status.st_size == 0:
            raise GraftError(f"{label}: cannot decode image (empty file)")
        return _decode(handle, label, limits)


def _decode(stream: BinaryIO, label: str, limits: ImageLimits) -> np.ndarray:
    try:
        with _OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            try:
                image = Image.open(stream, formats=accepted_formats())
            except UnidentifiedImageError:
                stream.seek(0)
                raise format_refusal(label, stream.read(64)) from None
        with image:
            width, height = image.size
            limits.check(width, height, label)
            if image.format in ("JPEG", "MPO"):
                check_jpeg_data(stream, label)
            image.load()
            array = _to_array(_upright(image))
        # Pillow's buffers are read-only; callers (torch.from_numpy) need an array of their own.
        return array if array.flags.writeable else array.copy()
    except GraftError:
        raise
    except Exception as exc:  # Pillow raises many types on bad input; none may escape as a crash
        kind = ImageTooLarge if isinstance(exc, _BOMBS) else GraftError
        raise kind(f"{label}: cannot decode image ({_reason(exc)})") from None


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a broken EXIF block leaves the pixels as stored rather than failing."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception:
        return image


def _reason(exc: Exception) -> str:
    """A short, one-line reason for a Pillow failure."""
    if isinstance(exc, UnidentifiedImageError):
        return "not a recognised image format"
    if isinstance(exc, _BOMBS):
        return "too many pixels, could be a decompression bomb"
    text = " ".join(str(exc).split())
    if "truncated" in text.lower() or isinstance(exc, EOFError):
        return "truncated file"
    return text[:100] or type(exc).__name__


def _to_array(image: Image.Image) -> np.ndarray:
    mode = image.mode
    has_key = image.info.get("transparency") is not None
    if mode in _GRAY_MODES and not (mode == "L" and has_key):
        return np.asarray(image.convert("L"))[:, :, None]
    if mode in _GRAY_ALPHA_MODES or mode == "L":
        gray_alpha = np.asarray(image.convert("LA"))
        return _over_white(gray_alpha[:, :, :1], gray_alpha[:, :, 1])
    if mode in _WIDE_GRAY_MODES:
        return _wide_gray_to_uint8(image)[:, :, None]
    if mode in _ALPHA_MODES or (mode in ("P", "RGB") and has_key):
        rgba = np.asarray(image.convert("RGBA"))
        return _over_white(rgba[:, :, :3], rgba[:, :, 3])
    if mode == "P" or mode in _COLOUR_MODES:
        return np.asarray(image.convert("RGB"))
    raise ValueError(f"unsupported image mode {mode}")


def _over_white(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Composite uint8 HxWxC `colour` with HxW `alpha` onto white, rounding to nearest."""
    a = alpha.astype(np.uint32)[:, :, None]
    out = (colour.astype(np.uint32) * a + 255 * (255 - a) + 127) // 255
    return out.astype(np.uint8)


def _wide_gray_to_uint8(image: Image.Image) -> np.ndarray:
    """16-bit, 32-bit integer or float gray → uint8 HxW, scaled by the largest value the data can hold."""
    if image.mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        peak = float(values.max(initial=0.0))
        top = 1.0 if peak <= 1.0 else 255.0 if peak <= 255.0 else 65535.0 if peak <= 65535.0 else peak
    else:
        values = np.asarray(image if image.mode == "I" else image.convert("I"), dtype=np.float64)
        top = float(min(2 ** _bit_depth(image), 2**31) - 1)  # mode "I" is int32
        if values.max(initial=0.0) > top:  # the file's depth was a guess and the data says otherwise
            top = float(2**31 - 1)
    return np.rint(np.clip(values, 0.0, top) * (255.0 / top)).astype(np.uint8)


def _bit_depth(image: Image.Image) -> int:
    """Bits per sample of an integer gray image: 16 for "I;16*", PNG and PPM; TIFF says; otherwise 16."""
    if image.format == "TIFF":
        bits = getattr(image, "tag_v2", {}).get(258)
        if isinstance(bits, tuple):
            bits = bits[0] if bits else None
        if isinstance(bits, int) and 1 <= bits <= 32:
            return bits
    return 16
