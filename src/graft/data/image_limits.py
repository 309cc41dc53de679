"""What an image file may claim before a pixel of it is decoded: its format, its shape, and (JPEG) its data size.

Decoding is where a hostile upload costs memory and time, so every check here reads headers only:
- **Formats** are an allow-list (`ACCEPTED_FORMATS`): the ones cameras, phones and browsers write. Containers that
  decode another image while being opened (ICO, ICNS) and formats that run external programs (EPS) are refused by
  name, before Pillow's plugin for them runs.
- **Shape**: at most `max_pixels` pixels and `max_side` pixels on either side. The side bound is what keeps a thin
  image cheap: a 1 × 49 000 000 PNG is 95 KB and under any pixel limit, but resizing it takes gigabytes.
- **JPEG data**: a Huffman-coded JPEG codes every block's DC value with at least one bit, so its scans hold at least
  one byte per 8 MCUs. A 1 KB file whose header claims 7000 × 7000 cannot hold that image; libjpeg would fill the
  missing blocks with gray and report no error, so graft refuses it as corrupt.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import BinaryIO

from graft.errors import GraftError

DEFAULT_MAX_PIXELS = 50_000_000  # a 48-megapixel phone photo fits
DEFAULT_MAX_SIDE = 16_384  # WebP's own limit; wide enough for phone panoramas
# Pillow format names; PPM covers PGM/PBM, MPO is the multi-picture JPEG some phones write.
ACCEPTED_FORMATS: tuple[str, ...] = ("JPEG", "MPO", "PNG", "WEBP", "BMP", "DIB", "GIF", "TIFF", "PPM")
_FORMAT_NAMES = "JPEG, PNG, WebP, BMP, GIF, TIFF, PNM"


class ImageTooLarge(GraftError):
    """An image with more pixels (or a longer side) than allowed, refused from its header (the server answers 413)."""


@dataclass(frozen=True)
class ImageLimits:
    """Bounds on an image's header, checked before decoding; None lifts a bound (`graft predict --no-limits`)."""

    max_pixels: int | None = DEFAULT_MAX_PIXELS
    max_side: int | None = DEFAULT_MAX_SIDE

    def check(self, width: int, height: int, label: str) -> None:
        if self.max_side is not None and max(width, height) > self.max_side:
            raise ImageTooLarge(
                f"{label}: image is {width}x{height} pixels, a side longer than the limit of {self.max_side}"
            )
        if self.max_pixels is not None and width * height > self.max_pixels:
            raise ImageTooLarge(f"{label}: image is {width}x{height} pixels, more than the limit of {self.max_pixels}")


DEFAULT_LIMITS = ImageLimits()
NO_LIMITS = ImageLimits(None, None)


def accepted_formats() -> tuple[str, ...]:
    """`ACCEPTED_FORMATS` that this Pillow has plugins for (all plugins registered: `Image.open` needs them)."""
    from PIL import Image  # here, not above: `graft serve --help` reads the limits without loading Pillow

    Image.init()
    return tuple(name for name in ACCEPTED_FORMATS if name in Image.OPEN)


def refused_format(prefix: bytes) -> str | None:
    """The Pillow name of a format outside the allow-list that `prefix` (a file's first bytes) looks like."""
    from PIL import Image

    Image.init()
    for name in Image.ID:
        if name in ACCEPTED_FORMATS:
            continue
        accept = Image.OPEN[name][1]
        try:
            if accept is not None and accept(prefix):
                return name
        except Exception:  # a plugin's sniffing of arbitrary bytes must not turn into a crash
            continue
    return None


def format_refusal(label: str, prefix: bytes) -> GraftError:
    """The one-line refusal of a file Pillow would not open under the allow-list."""
    name = refused_format(prefix)
    if name is None:
        return GraftError(f"{label}: cannot decode image (not a recognised image format; graft reads {_FORMAT_NAMES})")
    return GraftError(f"{label}: {name} images are not accepted (graft reads {_FORMAT_NAMES})")


_SOF_HUFFMAN = {0xC0, 0xC1, 0xC2}  # baseline, extended, progressive; arithmetic coding (C9-CB) is not bounded
_STANDALONE = {0x01, *range(0xD0, 0xDA)}  # TEM, RSTn, SOI, EOI: markers without a length
_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")  # the first marker that is not stuffing or a restart
_CHUNK = 1 << 20
MAX_JPEG_SCANS = 100  # progressive JPEGs have ~10; thousands of scans make a decode take minutes


def check_jpeg_data(stream: BinaryIO, label: str) -> None:
    """GraftError when a Huffman-coded JPEG's scans are too short for the size its frame header claims, or when it
    has more than `MAX_JPEG_SCANS` scans. Reads the stream from its start in 1 MB chunks (memory stays bounded)."""
    stream.seek(2)
    frame, scan_bytes, scans = None, 0, 0
    while len(head := stream.read(2)) == 2 and head[0] == 0xFF:
        marker = head[1]
        if marker == 0xFF:  # fill byte
            stream.seek(-1, 1)
            continue
        if marker in _STANDALONE:
            if marker == 0xD9:
                break
            continue
        size = stream.read(2)
        if len(size) < 2:
            return  # truncated: the decoder says so
        (length,) = struct.unpack(">H", size)
        if marker == 0xDA:
            scans += 1
            if scans > MAX_JPEG_SCANS:
                raise GraftError(f"{label}: cannot decode image (JPEG with more than {MAX_JPEG_SCANS} scans)")
            stream.seek(length - 2, 1)
            scan_bytes += _skip_entropy_data(stream)
            continue
        segment = stream.read(length - 2)
        if marker in _SOF_HUFFMAN or (0xC3 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC)):
            frame = (marker, segment)
    if frame is None or frame[0] not in _SOF_HUFFMAN or len(frame[1]) < 6:
        return
    height, width, count = struct.unpack(">HHB", frame[1][1:6])
    sampling = frame[1][6 : 6 + 3 * count]
    h_max = max((sampling[i + 1] >> 4 for i in range(0, len(sampling) - 1, 3)), default=1) or 1
    v_max = max((sampling[i + 1] & 15 for i in range(0, len(sampling) - 1, 3)), default=1) or 1
    mcus = -(-width // (8 * h_max)) * -(-height // (8 * v_max))
    if scan_bytes * 8 < mcus:
        raise GraftError(
            f"{label}: cannot decode image (corrupt JPEG: {scan_bytes} bytes of data cannot hold the "
            f"{width}x{height} image its header claims)"
        )


def _skip_entropy_data(stream: BinaryIO) -> int:
    """Move `stream` to the marker that ends a scan's entropy-coded data; return that data's length in bytes."""
    origin = start = stream.tell()  # `start`: where the current block begins in the file
    carry = b""
    while chunk := stream.read(_CHUNK):
        block = carry + chunk
        end = _SCAN_END.search(block)
        if end is not None:
            stream.seek(start + end.start())
            return start + end.start() - origin
        carry = block[-1:]  # a marker may straddle two chunks
        start += len(block) - 1
    return stream.tell() - origin
