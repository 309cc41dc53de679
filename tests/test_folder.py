"""scan_folder and FileImages: layouts, skipped files, channel detection and one-line errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from graft.data.folder import NOT_AN_IMAGE, FileImages, scan_folder
from graft.errors import GraftError
from graft.spec import InputSpec

FOLD_SPEC = InputSpec(size=(16, 16), channels=1, mode="fold", mean=(0.0,), std=(1.0,))


def save_gray(path: Path, height: int = 12, width: int = 10, value: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((height, width), value, dtype=np.uint8), "L").save(path)
    return path


def save_rgb(path: Path, height: int = 12, width: int = 10, colour: tuple[int, int, int] = (200, 10, 10)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((height, width, 3), colour, dtype=np.uint8), "RGB").save(path)
    return path


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def error_of(root: Path) -> str:
    with pytest.raises(GraftError) as excinfo:
        scan_folder(root)
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_layout_a_walks_class_folders_recursively(tmp_path: Path) -> None:
    save_gray(tmp_path / "dog" / "b.png")
    save_gray(tmp_path / "cat" / "a.png")
    save_gray(tmp_path / "cat" / "indoor" / "c.JPG")
    save_gray(tmp_path / "dog" / "d.bmp")
    scan = scan_folder(tmp_path)
    assert scan.test is None and scan.skipped == []
    train = scan.train
    assert isinstance(train, FileImages)
    assert train.classes == ["cat", "dog"]
    assert len(train) == 4
    names = [p.relative_to(tmp_path).as_posix() for p in train.paths]
    assert names == ["cat/a.png", "cat/indoor/c.JPG", "dog/b.png", "dog/d.bmp"]
    np.testing.assert_array_equal(train.labels, [0, 0, 1, 1])
    assert train.labels.dtype == np.int64


def test_layout_b_train_and_test(tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        save_gray(tmp_path / "train" / name / "1.png")
        save_gray(tmp_path / "train" / name / "2.png")
    save_gray(tmp_path / "test" / "c" / "1.png")
    save_gray(tmp_path / "test" / "a" / "1.png")
    scan = scan_folder(tmp_path)
    assert scan.train.classes == ["a", "b", "c"]
    assert len(scan.train) == 6
    assert scan.test is not None
    assert scan.test.classes == ["a", "b", "c"]
    np.testing.assert_array_equal(scan.test.labels, [0, 2])
    assert all("test" in p.parts for p in scan.test.paths)


def test_layout_b_class_folders_next_to_test(tmp_path: Path) -> None:
    save_gray(tmp_path / "cat" / "1.png")
    save_gray(tmp_path / "dog" / "1.png")
    save_gray(tmp_path / "test" / "dog" / "1.png")
    scan = scan_folder(tmp_path)
    assert scan.train.classes == ["cat", "dog"]
    assert scan.test is not None
    np.testing.assert_array_equal(scan.test.labels, [1])


def test_hidden_entries_are_ignored(tmp_path: Path) -> None:
    save_gray(tmp_path / "cat" / "1.png")
    save_gray(tmp_path / "dog" / "1.png")
    write(tmp_path / "cat" / ".DS_Store", b"junk")
    save_gray(tmp_path / "cat" / ".thumbs" / "t.png")
    save_gray(tmp_path / ".cache" / "x.png")
    scan = scan_folder(tmp_path)
    assert scan.train.classes == ["cat", "dog"]
    assert len(scan.train) == 2
    assert scan.skipped == []


def test_unreadable_and_non_image_files_are_skipped_with_reasons(tmp_path: Path) -> None:
    save_gray(tmp_path / "cat" / "1.png")
    save_gray(tmp_path / "dog" / "1.png")
    notes = write(tmp_path / "cat" / "notes.txt", b"hello")
    broken = write(tmp_path / "dog" / "broken.jpg", b"not a jpeg at all")
    empty = write(tmp_path / "dog" / "empty.png", b"")
    loose = write(tmp_path / "README.md", b"my photos")
    scan = scan_folder(tmp_path)
    assert len(scan.train) == 2
    reasons = dict(scan.skipped)
    assert set(reasons) == {notes, broken, empty, loose}
    assert reasons[notes] == NOT_AN_IMAGE == "not a JPEG/PNG/WebP/BMP file"
    assert reasons[broken].startswith("broken.jpg: cannot decode image")
    assert "empty" in reasons[empty]
    assert "class folder" in reasons[loose]
    assert all("\n" not in reason for reason in reasons.values())


def test_truncated_image_is_skipped(tmp_path: Path) -> None:
    save_gray(tmp_path / "cat" / "1.png")
    save_gray(tmp_path / "dog" / "1.png")
    good = save_rgb(tmp_path / "dog" / "2.jpg", 64, 64)
    data = good.read_bytes()
    good.write_bytes(data[: len(data) // 2])
    scan = scan_folder(tmp_path)
    assert [p for p, _ in scan.skipped] == [good]
    assert "truncated" in scan.skipped[0][1]
    assert scan.train.channels == 1  # the only colour image was unreadable


def test_all_gray_gives_one_channel(tmp_path: Path) -> None:
    save_gray(tmp_path / "cat" / "1.png")
    save_gray(tmp_path / "dog" / "1.jpg")
    scan = scan_folder(tmp_path)
    assert scan.train.channels == 1
    assert scan.train.image(0).shape == (12, 10, 1)


def test_one_colour_image_gives_three_channels_everywhere(tmp_path: Path) -> None:
    save_gray(tmp_path / "train" / "cat" / "1.png", value=77)
    save_rgb(tmp_path / "train" / "dog" / "1.png")
    save_gray(tmp_path / "test" / "cat" / "1.png", value=33)
    scan = scan_folder(tmp_path)
    assert scan.test is not None
    assert scan.train.channels == scan.test.channels == 3
    gray = scan.train.image(0)
    assert gray.shape == (12, 10, 3) and gray.dtype == np.uint8
    assert (gray == 77).all()
    np.testing.assert_array_equal(scan.test.image(0)[:, :, 0], scan.test.image(0)[:, :, 2])
    np.testing.assert_array_equal(scan.train.image(1)[0, 0], [200, 10, 10])


@pytest.mark.parametrize("colour", [False, True])
def test_mixed_sizes_batch_to_the_spec_size(tmp_path: Path, colour: bool) -> None:
    sizes = [(12, 10), (30, 20), (7, 40), (16, 16), (64, 9)]
    for k, (height, width) in enumerate(sizes):
        save_gray(tmp_path / ("cat" if k % 2 else "dog") / f"{k}.png", height, width, value=20 * k)
    if colour:
        save_rgb(tmp_path / "cat" / "colour.png", 25, 33)
    images = scan_folder(tmp_path, workers=2).train
    n = len(images)
    batch = images.batch(np.arange(n), FOLD_SPEC)
    assert batch.dtype.is_floating_point is False
    assert str(batch.dtype) == "torch.uint8"
    assert tuple(batch.shape) == (n, 3 if colour else 1, 16, 16)


def test_subset_is_a_view(tmp_path: Path) -> None:
    for k in range(3):
        save_gray(tmp_path / "cat" / f"{k}.png", value=k)
        save_gray(tmp_path / "dog" / f"{k}.png", value=100 + k)
    train = scan_folder(tmp_path).train
    part = train.subset(np.array([5, 0, 3]), name="valid")
    assert isinstance(part, FileImages)
    assert part.name == "valid" and len(part) == 3
    assert part.paths is train.paths
    np.testing.assert_array_equal(part.labels, [1, 0, 1])
    assert part.image(0)[0, 0, 0] == 102
    inner = part.subset(np.array([2]))
    assert inner.name == "valid" and inner.image(0)[0, 0, 0] == 100
    assert pickle.loads(pickle.dumps(part)).paths == part.paths  # DataLoader workers receive a copy


def test_scan_is_deterministic_across_worker_counts(tmp_path: Path) -> None:
    for k in range(12):
        save_gray(tmp_path / f"class{k % 3}" / f"{k:02d}.png", value=k)
    one, many = scan_folder(tmp_path, workers=1).train, scan_folder(tmp_path, workers=8).train
    assert one.paths == many.paths
    np.testing.assert_array_equal(one.labels, many.labels)


def test_missing_path_and_file_path(tmp_path: Path) -> None:
    assert "no such directory" in error_of(tmp_path / "nowhere")
    file = write(tmp_path / "photo.png", b"x")
    assert "not a directory" in error_of(file)


def test_one_class_is_refused(tmp_path: Path) -> None:
    save_gray(tmp_path / "cat" / "1.png")
    message = error_of(tmp_path)
    assert "at least 2 class folders" in message and "cat" in message


def test_empty_class_is_named(tmp_path: Path) -> None:
    save_gray(tmp_path / "cat" / "1.png")
    write(tmp_path / "dog" / "notes.txt", b"hello")
    message = error_of(tmp_path)
    assert "dog" in message and "no readable images" in message
    assert "notes.txt" in message  # says why, with an example


def test_no_readable_images_at_all(tmp_path: Path) -> None:
    write(tmp_path / "cat" / "a.jpg", b"garbage")
    write(tmp_path / "dog" / "b.png", b"garbage")
    message = error_of(tmp_path)
    assert "no readable images" in message and "2 files skipped" in message


def test_test_class_not_in_train(tmp_path: Path) -> None:
    save_gray(tmp_path / "train" / "cat" / "1.png")
    save_gray(tmp_path / "train" / "dog" / "1.png")
    save_gray(tmp_path / "test" / "cat" / "1.png")
    save_gray(tmp_path / "test" / "bird" / "1.png")
    save_gray(tmp_path / "test" / "fish" / "1.png")
    message = error_of(tmp_path)
    assert "bird, fish" in message and "not in train" in message


def test_train_folder_beside_class_folders_is_refused(tmp_path: Path) -> None:
    save_gray(tmp_path / "train" / "cat" / "1.png")
    save_gray(tmp_path / "train" / "dog" / "1.png")
    save_gray(tmp_path / "valid" / "cat" / "1.png")
    assert "valid" in error_of(tmp_path)


def test_predict_lists_a_folder_as_training_does(tmp_path: Path) -> None:
    """`graft predict FOLDER` and folder data sources share one listing: hidden files (macOS `._x.png` resource
    forks, which are not images) are ignored by both, images in sub-folders are found by both."""
    from graft.cli.bundle import _image_files

    photos = tmp_path / "photos"
    real = [save_gray(photos / "a.png"), save_gray(photos / "sub" / "b.png")]
    (photos / "._a.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (photos / ".hidden").mkdir()
    save_gray(photos / ".hidden" / "c.png")
    (photos / "notes.txt").write_text("not a photo")
    listed = _image_files([photos])
    assert sorted(listed) == sorted(real), listed
    from graft.data.folder import image_files

    assert listed == image_files(photos, [])
    loose = tmp_path / "loose.png"
    assert _image_files([loose, photos]) == [loose, *listed]  # a file given by name is kept as given
