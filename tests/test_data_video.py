"""graft data frames: videos encoded here with PyAV itself (no binary fixtures), rotation, selection, errors."""

from __future__ import annotations

import itertools
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from cli_helpers import run_cli as run
from graft.data import extract_frames, load_source
from graft.data.video import resize_frame
from graft.errors import GraftError

HEIGHT, WIDTH = 48, 64
RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def quadrant_image(shade: int = 0) -> np.ndarray:
    """A frame whose four quadrants have different colours, so every turn and mirror is visible."""
    image = np.empty((HEIGHT, WIDTH, 3), np.uint8)
    h, w = HEIGHT // 2, WIDTH // 2
    image[:h, :w], image[:h, w:], image[h:, :w], image[h:, w:] = RED, GREEN, BLUE, WHITE
    image[h - 4 : h + 4] = shade  # a band whose brightness tells frames apart
    return image


def encode(
    path: Path,
    codec: str = "mpeg4",
    frames: int = 20,
    rate: int = 10,
    rotation: int | None = None,
    hflip: bool = False,
    vflip: bool = False,
    options: dict[str, str] | None = None,
) -> Path:
    """Write a small test video with the FFmpeg that ships in PyAV's wheel; frame i has band shade 12 × i."""
    with av.open(str(path), "w", options=options or {}) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.bit_rate = 2_000_000  # nearly lossless at this size, so pixels can be compared
        if rotation is not None or hflip or vflip:
            stream.set_display_rotation(rotation or 0, hflip=hflip, vflip=vflip)
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(quadrant_image(12 * i), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def quadrants(image: np.ndarray) -> np.ndarray:
    """Mean colour of each quadrant (4, 3), away from the middle band and the compression edges."""
    h, w = image.shape[0] // 2, image.shape[1] // 2
    parts = [image[:h, :w], image[:h, w:], image[h:, :w], image[h:, w:]]
    return np.array([p[2:-3, 2:-3].reshape(-1, 3).mean(axis=0) for p in parts])


def read(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


@pytest.mark.parametrize(
    ("suffix", "codec"), [(".mp4", "h264"), (".mp4", "mpeg4"), (".mov", "h264"), (".webm", "vp8"), (".webm", "vp9")]
)
def test_every_container_and_codec_gives_all_frames_upright_and_named(tmp_path, suffix, codec):
    video = encode(tmp_path / f"clip{suffix}", codec)
    result = extract_frames(video, label="cup", out=tmp_path / "data")
    assert result.folder == tmp_path / "data" / "cup"
    assert result.written == 20 and result.skipped == 0
    names = sorted(p.name for p in result.folder.iterdir())
    assert names == [f"clip-f{i:06d}.png" for i in range(20)]  # nothing else: the temp folder is gone
    first = read(result.folder / names[0])
    assert first.shape == (HEIGHT, WIDTH, 3)
    assert np.abs(quadrants(first) - quadrants(quadrant_image())).max() < 30
    # Frames stay in order: the band brightens by 12 per frame.
    bands = [read(result.folder / name)[HEIGHT // 2 - 2 : HEIGHT // 2 + 2, 8:-8].mean() for name in names]
    assert np.all(np.diff(bands) > 6), bands


def _upright_reference(rotation: int, hflip: bool, vflip: bool) -> np.ndarray:
    """What a player shows, by PyAV's definition of set_display_rotation: turn counter-clockwise, then mirror."""
    expected = np.rot90(quadrant_image(), rotation // 90)
    expected = expected[:, ::-1] if hflip else expected
    return expected[::-1] if vflip else expected


@pytest.mark.parametrize(("rotation", "hflip", "vflip"), list(itertools.product((0, 90, 180, 270), (0, 1), (0, 1))))
def test_display_matrix_is_applied_like_a_player(tmp_path, rotation, hflip, vflip):
    video = encode(tmp_path / "phone.mov", "mpeg4", frames=1, rotation=rotation, hflip=bool(hflip), vflip=bool(vflip))
    result = extract_frames(video, label="cup", out=tmp_path)
    frame = read(result.videos[0].files[0])
    expected = _upright_reference(rotation, bool(hflip), bool(vflip))
    assert frame.shape == expected.shape
    assert np.abs(quadrants(frame) - quadrants(expected)).max() < 30
    assert (result.videos[0].width, result.videos[0].height) == (WIDTH, HEIGHT)  # as stored


def test_portrait_phone_video_comes_out_portrait_at_the_asked_size(tmp_path):
    video = encode(tmp_path / "IMG_0001.MOV", "h264", frames=3, rotation=-90)  # what phones write for portrait
    result = extract_frames(video, label="cup", out=tmp_path, size=24)
    video_result = result.videos[0]
    assert video_result.rotation == 270 and not video_result.flipped
    frame = read(video_result.files[0])
    assert frame.shape == (32, 24, 3)  # portrait, shorter side 24, aspect 64:48 kept
    assert video_result.files[0].name == "IMG_0001-f000000.png"


def test_every_fps_and_limit_pick_the_right_frames(tmp_path):
    video = encode(tmp_path / "clip.mp4", "mpeg4", frames=20, rate=10)

    def picked(**options) -> list[str]:
        result = extract_frames(video, label="x", out=tmp_path / str(len(list(tmp_path.iterdir()))), **options)
        return [p.name.removeprefix("clip-f").removesuffix(".png") for p in result.videos[0].files]

    assert picked(every=5) == ["000000", "000005", "000010", "000015"]
    assert picked(fps=2) == ["000000", "000005", "000010", "000015"]  # 10 fps video, 2 per second
    assert picked(fps=100) == [f"{i:06d}" for i in range(20)]  # more than the video has: every frame
    assert picked(every=3, limit=2) == ["000000", "000003"]
    result = extract_frames(video, label="x", out=tmp_path / "counts", every=4)
    assert (result.written, result.skipped) == (5, 15)
    twin = encode(tmp_path / "twin.mov", "mpeg4", frames=20, rate=10)
    result = extract_frames([video, twin], label="x", out=tmp_path / "both", fps=2)
    assert [v.written for v in result.videos] == [4, 4]  # the 1/fps grid starts again for each video


def test_size_and_centre_crop():
    image = np.zeros((48, 64, 3), np.uint8)
    image[:, 8:56] = 200  # the centred 48×48 square is bright, the sides dark
    assert resize_frame(image, None).shape == (48, 64, 3)
    assert resize_frame(image, 24).shape == (24, 32, 3)  # shorter side, aspect kept
    assert resize_frame(image, 96).shape == (96, 128, 3)
    cropped = resize_frame(image, None, "center")
    assert cropped.shape == (48, 48, 3) and cropped.min() == 200
    small = resize_frame(image, 16, "center")
    assert small.shape == (16, 16, 3) and small.min() >= 199
    tall = resize_frame(np.zeros((64, 48, 3), np.uint8), 24)
    assert tall.shape == (32, 24, 3)


def test_videos_share_a_class_folder_and_reruns_need_force(tmp_path):
    one = encode(tmp_path / "one.mp4", frames=4)
    (tmp_path / "b").mkdir()
    two = encode(tmp_path / "b" / "two.webm", "vp8", frames=3)
    result = extract_frames([one, two], label="cup", out=tmp_path / "data")
    assert [v.written for v in result.videos] == [4, 3] and result.written == 7
    with pytest.raises(GraftError, match=r"already has 4 frames of 'one'.*--force"):
        extract_frames(one, label="cup", out=tmp_path / "data", every=2)
    result = extract_frames(one, label="cup", out=tmp_path / "data", every=2, overwrite=True)
    names = sorted(p.name for p in (tmp_path / "data" / "cup").iterdir())
    # one's old four frames were replaced by two; two's frames were not touched.
    assert names == ["one-f000000.png", "one-f000002.png"] + [f"two-f{i:06d}.png" for i in range(3)]
    (tmp_path / "c").mkdir()
    same_name = encode(tmp_path / "c" / "one.mov", frames=2)
    with pytest.raises(GraftError, match="two videos have the name 'one'"):
        extract_frames([one, same_name], label="dog", out=tmp_path / "data")
    assert not (tmp_path / "data" / "dog").exists()


def test_frames_make_a_folder_data_set(tmp_path):
    for label, shade in (("cup", 0), ("pen", 1)):
        for split in ("train", "test"):
            video = encode(tmp_path / f"{label}-{split}.mp4", frames=5 + shade)
            extract_frames(video, label=label, out=tmp_path / "photos" / split, size=16, crop="center")
    train, test = load_source(f"folder:{tmp_path / 'photos'}")
    assert train.classes == ["cup", "pen"] and len(train) == 11 and len(test) == 11
    assert train.image(0).shape == (16, 16, 3)


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    good = encode(tmp_path / "good.mp4", "h264", frames=20)
    data = good.read_bytes()  # moov (the index) is at the end: cut off, nothing can be read
    fast = encode(tmp_path / "fast.mp4", "h264", frames=20, options={"movflags": "faststart"}).read_bytes()
    webm = encode(tmp_path / "good.webm", "vp8", frames=20).read_bytes()
    text = tmp_path / "notes.mp4"
    text.write_text("not a video at all\n")
    image = tmp_path / "photo.mp4"
    Image.fromarray(quadrant_image()).save(image, format="PNG")
    cases = {
        "missing": (tmp_path / "missing.mp4", "no such file"),
        "directory": (tmp_path, "is a directory"),
        "empty": (tmp_path / "empty.mp4", "empty file"),
        "text": (text, "not a readable video"),
        "image": (image, "still image"),
        "cut index": (tmp_path / "cut.mp4", "not a readable video|no video stream"),
        "cut stream": (tmp_path / "cutfast.mp4", "truncated|damaged"),
        "cut webm": (tmp_path / "cut.webm", "truncated"),
    }
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    (tmp_path / "cutfast.mp4").write_bytes(fast[: len(fast) * 6 // 10])
    (tmp_path / "cut.webm").write_bytes(webm[: len(webm) * 6 // 10])
    return cases


def test_bad_videos_are_one_line_errors_and_write_nothing(tmp_path):
    for case, (path, expected) in _bad_files(tmp_path).items():
        out = tmp_path / "out"
        with pytest.raises(GraftError, match=expected) as excinfo:
            extract_frames(path, label="cup", out=out)
        message = str(excinfo.value)
        assert "\n" not in message and str(path) in message, case
        assert not (out / "cup").exists(), case  # no partial frames, no empty class folder


def test_a_bad_video_among_good_ones_is_found_before_anything_is_written(tmp_path):
    good = encode(tmp_path / "good.mp4", frames=3)
    text = tmp_path / "bad.mov"
    text.write_text("hello")
    with pytest.raises(GraftError, match=r"bad\.mov: not a readable video"):
        extract_frames([good, text], label="cup", out=tmp_path / "out")
    assert not (tmp_path / "out" / "cup").exists()


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"label": "train"}, "reserved"),
        ({"label": "a/b"}, "slashes"),
        ({"label": ".hidden"}, "start with '.'"),
        ({"label": " "}, "class name"),
        ({"every": 0}, "--every must be at least 1"),
        ({"every": 2, "fps": 1.0}, "not both"),
        ({"fps": 0.0}, "--fps must be a positive"),
        ({"size": 0}, "--size"),
        ({"limit": 0}, "--limit"),
        ({"crop": "square"}, "unknown crop"),
    ],
)
def test_bad_options_are_refused(tmp_path, options, expected):
    video = encode(tmp_path / "clip.mp4", frames=1)
    with pytest.raises(GraftError, match=expected):
        extract_frames(video, **{"label": "cup", "out": tmp_path / "out", **options})


def test_cli_frames(tmp_path, capsys):
    video = encode(tmp_path / "clip.mp4", frames=10, rotation=90)
    code, out, err = run(["data", "frames", str(video), "-l", "cup", "-o", str(tmp_path / "d"), "--every", "2"], capsys)
    assert code == 0, err
    assert "5 frames written, 5 skipped (64×48, turned 90°)" in out
    assert len(list((tmp_path / "d" / "cup").glob("clip-f*.png"))) == 5

    text = tmp_path / "text.mp4"
    text.write_text("not a video")
    for args in (
        [str(text), "-l", "cup", "-o", str(tmp_path / "d")],
        [str(video), "-l", "cup", "-o", str(tmp_path / "d")],  # frames exist: --force needed
        [str(video), "-l", "cup", "-o", str(tmp_path / "d2"), "--crop", "round"],
        [str(video), "-o", str(tmp_path / "d2")],  # no --label
    ):
        code, out, err = run(["data", "frames", *args], capsys)
        assert code == 2 and out == "", args
        assert err.startswith("graft: error:") and err.count("\n") == 1 and "Traceback" not in err, err
