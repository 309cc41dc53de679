"""decode_image: one rule per image mode, EXIF orientation, and one-line errors for every bad input."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from graft.data.images import IMAGE_EXTENSIONS, ImageLimits, _to_array, decode_image
from graft.errors import GraftError


def encode(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def noise(height: int, width: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)


def assert_one_line_error(excinfo: pytest.ExceptionInfo[GraftError], name: str) -> str:
    message = str(excinfo.value)
    assert message.startswith(f"{name}: ")
    assert "\n" not in message
    return message


def test_extensions() -> None:
    assert IMAGE_EXTENSIONS == (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def test_gray_is_one_channel_and_exact() -> None:
    pixels = noise(5, 7, 1)[:, :, 0]
    out = decode_image(encode(Image.fromarray(pixels, "L")))
    assert out.dtype == np.uint8 and out.shape == (5, 7, 1)
    assert out.flags.writeable  # torch.from_numpy warns on read-only arrays
    np.testing.assert_array_equal(out[:, :, 0], pixels)


def test_rgb_is_unchanged(tmp_path: Path) -> None:
    pixels = noise(6, 4)
    path = tmp_path / "photo.png"
    Image.fromarray(pixels, "RGB").save(path)
    for source in (path, str(path), path.read_bytes()):
        out = decode_image(source)
        assert out.shape == (6, 4, 3)
        np.testing.assert_array_equal(out, pixels)


def test_rgba_is_composited_over_white() -> None:
    rgba = np.array([[[0, 0, 0, 0], [100, 50, 0, 255], [0, 0, 0, 128], [200, 100, 0, 51]]], dtype=np.uint8)
    out = decode_image(encode(Image.fromarray(rgba, "RGBA")))
    assert out.shape == (1, 4, 3)
    expected = [[255, 255, 255], [100, 50, 0], [127, 127, 127], [244, 224, 204]]
    np.testing.assert_array_equal(out[0], expected)


def test_gray_alpha_is_composited_over_white_to_one_channel() -> None:
    la = np.array([[[0, 0], [0, 255], [100, 128], [40, 255]]], dtype=np.uint8)
    out = decode_image(encode(Image.fromarray(la, "LA")))
    assert out.shape == (1, 4, 1)
    np.testing.assert_array_equal(out[0, :, 0], [255, 0, 177, 40])


def test_palette_without_transparency_is_rgb() -> None:
    image = Image.new("P", (3, 1))
    image.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (3 * 253))
    image.putdata([0, 1, 2])
    out = decode_image(encode(image))
    assert out.shape == (1, 3, 3)
    np.testing.assert_array_equal(out[0], [[255, 0, 0], [0, 255, 0], [0, 0, 255]])


def test_palette_transparency_becomes_white() -> None:
    image = Image.new("P", (3, 1))
    image.putpalette([255, 0, 0, 0, 0, 0, 0, 0, 255] + [0] * (3 * 253))
    image.putdata([0, 1, 2])
    data = encode(image, transparency=1)
    assert Image.open(io.BytesIO(data)).mode == "P"
    out = decode_image(data)
    np.testing.assert_array_equal(out[0], [[255, 0, 0], [255, 255, 255], [0, 0, 255]])


def test_colour_key_transparency_becomes_white() -> None:
    rgb = np.array([[[10, 20, 30], [1, 2, 3]]], dtype=np.uint8)
    out = decode_image(encode(Image.fromarray(rgb, "RGB"), transparency=(1, 2, 3)))
    np.testing.assert_array_equal(out[0], [[10, 20, 30], [255, 255, 255]])
    gray = np.array([[10, 20]], dtype=np.uint8)
    out = decode_image(encode(Image.fromarray(gray, "L"), transparency=20))
    np.testing.assert_array_equal(out[0, :, 0], [10, 255])


def test_16_bit_gray_png_is_scaled_by_257() -> None:
    values = np.array([[0, 128, 129, 257 * 100, 65535]], dtype=np.uint16)
    data = encode(Image.fromarray(values))
    assert Image.open(io.BytesIO(data)).mode in ("I;16", "I")
    out = decode_image(data)
    assert out.dtype == np.uint8 and out.shape == (1, 5, 1)
    np.testing.assert_array_equal(out[0, :, 0], [0, 0, 1, 100, 255])


def test_16_bit_png_opened_as_mode_i_is_scaled_as_16_bit() -> None:
    # Older Pillow opens 16-bit PNGs as "I": the rule must not depend on the version.
    values = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    image = Image.open(io.BytesIO(encode(Image.fromarray(values)))).convert("I")
    image.format = "PNG"
    np.testing.assert_array_equal(_to_array(image)[0, :, 0], [0, 100, 255])


def test_16_bit_pgm_opens_as_mode_i_and_is_scaled() -> None:
    values = np.array([0, 257 * 100, 65535], dtype=">u2")
    data = b"P5\n3 1\n65535\n" + values.tobytes()
    assert Image.open(io.BytesIO(data)).mode == "I"
    np.testing.assert_array_equal(decode_image(data)[0, :, 0], [0, 100, 255])


def test_float_gray_in_unit_range_is_scaled_by_255() -> None:
    image = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), "F")
    np.testing.assert_array_equal(_to_array(image)[0, :, 0], [0, 128, 255])


def test_cmyk_jpeg_is_rgb() -> None:
    image = Image.new("CMYK", (16, 8), (0, 0, 0, 0))
    image.paste((0, 255, 255, 0), (8, 0, 16, 8))
    data = encode(image, "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    out = decode_image(data).astype(int)
    assert out.shape == (8, 16, 3)
    assert np.abs(out[:, :6] - [255, 255, 255]).max() <= 8  # white
    assert np.abs(out[:, 10:] - [255, 0, 0]).max() <= 8  # red


@pytest.mark.parametrize("mode", ["YCbCr", "HSV", "LAB"])
def test_other_colour_spaces_are_rgb(mode: str) -> None:
    out = _to_array(Image.new(mode, (4, 2)))
    assert out.shape == (2, 4, 3) and out.dtype == np.uint8


def test_one_bit_is_gray_0_or_255() -> None:
    bits = np.array([[True, False, True]])
    data = encode(Image.fromarray(bits))
    assert Image.open(io.BytesIO(data)).mode == "1"
    out = decode_image(data)
    assert out.shape == (1, 3, 1)
    np.testing.assert_array_equal(out[0, :, 0], [255, 0, 255])


@pytest.mark.parametrize(
    ("orientation", "bright"),
    [
        (6, (slice(0, 4), slice(-4, None))),  # rotate 90° clockwise: stored top-left → shown top-right
        (8, (slice(-4, None), slice(0, 4))),  # rotate 90° anticlockwise: stored top-left → shown bottom-left
    ],
)
def test_exif_orientation_is_applied(tmp_path: Path, orientation: int, bright: tuple[slice, slice]) -> None:
    stored = np.zeros((10, 20, 3), dtype=np.uint8)  # 20 wide, 10 high
    stored[:4, :4] = 255  # a bright top-left corner
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "phone.jpg"
    Image.fromarray(stored).save(path, "JPEG", quality=95, exif=exif)
    out = decode_image(path)
    assert out.shape == (20, 10, 3)
    assert out[bright].mean() > 200
    dark = np.ones((20, 10), dtype=bool)
    dark[bright] = False
    assert out[dark].mean() < 30


def test_max_pixels_refuses_before_decoding() -> None:
    data = encode(Image.fromarray(noise(100, 100)))
    assert decode_image(data, limits=ImageLimits(max_pixels=10_000)).shape == (100, 100, 3)
    with pytest.raises(GraftError) as excinfo:
        decode_image(data, limits=ImageLimits(max_pixels=9_999), name="upload.png")
    message = assert_one_line_error(excinfo, "upload.png")
    assert "100x100" in message and "9999" in message


def test_pillow_decompression_bomb_is_a_graft_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow refuses above twice its limit
    data = encode(Image.fromarray(noise(50, 50)))
    filters = list(warnings.filters)
    with pytest.raises(GraftError) as excinfo:
        decode_image(data, name="bomb.png")
    assert "decompression bomb" in assert_one_line_error(excinfo, "bomb.png")
    assert warnings.filters == filters


def test_graft_limits_decide_below_pillows_ceiling(monkeypatch: pytest.MonkeyPatch) -> None:
    # Between Pillow's warning and its error, graft's own limits decide (so --no-limits means what it says).
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    data = encode(Image.fromarray(noise(40, 40)))
    assert decode_image(data, limits=ImageLimits(None, None)).shape == (40, 40, 3)
    with pytest.raises(GraftError, match="more than the limit of 1500"):
        decode_image(data, limits=ImageLimits(max_pixels=1500))


def test_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("hello, not a picture\n")
    with pytest.raises(GraftError) as excinfo:
        decode_image(path)
    assert "cannot decode image" in assert_one_line_error(excinfo, "notes.jpg")


def test_empty_file_and_empty_bytes(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(GraftError) as excinfo:
        decode_image(path)
    assert "empty" in assert_one_line_error(excinfo, "empty.png")
    with pytest.raises(GraftError) as excinfo:
        decode_image(b"", name="upload")
    assert "empty" in assert_one_line_error(excinfo, "upload")


@pytest.mark.parametrize(("fmt", "filename"), [("PNG", "cut.png"), ("JPEG", "cut.jpg"), ("BMP", "cut.bmp")])
def test_truncated_file_raises(tmp_path: Path, fmt: str, filename: str) -> None:
    data = encode(Image.fromarray(noise(64, 64)), fmt)
    path = tmp_path / filename
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(GraftError) as excinfo:
        decode_image(path)
    assert "truncated" in assert_one_line_error(excinfo, filename)


def test_truncated_webp_raises(tmp_path: Path) -> None:
    data = encode(Image.fromarray(noise(64, 64)), "WEBP")
    path = tmp_path / "cut.webp"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(GraftError) as excinfo:
        decode_image(path)
    assert_one_line_error(excinfo, "cut.webp")


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(GraftError) as excinfo:
        decode_image(tmp_path / "gone.png")
    assert "cannot read" in assert_one_line_error(excinfo, "gone.png")
    with pytest.raises(GraftError) as excinfo:
        decode_image(tmp_path, name="folder")
    assert_one_line_error(excinfo, "folder")


def test_bytes_errors_use_the_given_name() -> None:
    with pytest.raises(GraftError) as excinfo:
        decode_image(b"\x89PNG garbage", name="request body")
    assert_one_line_error(excinfo, "request body")
    with pytest.raises(GraftError) as excinfo:
        decode_image(b"garbage")
    assert_one_line_error(excinfo, "image")
