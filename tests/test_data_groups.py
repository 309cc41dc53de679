"""Validation that frames of one video cannot fool: groups kept whole by the split, and the end-of-run warning.

Videos are encoded here with PyAV and cut into frames by `graft data frames`' own function, as a phone user does.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

import graft
from graft.data import extract_frames, load_splits
from graft.data.groups import check_group_by, group_of
from graft.data.split import grouped_split, stratified_split
from graft.training.gap import valid_test_warning

HEIGHT, WIDTH = 32, 32


def _encode(path: Path, frames: list[np.ndarray]) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.bit_rate = 2_000_000
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _noise_video(path: Path, _what: object, seed: int, frames: int) -> Path:
    """A video of one random texture (a scene), shifting a pixel per frame: nothing in it tells its class."""
    texture = np.random.default_rng(seed).integers(0, 256, (HEIGHT, WIDTH, 3)).astype(np.uint8)
    return _encode(path, [np.roll(texture, i % 3, axis=1) for i in range(frames)])


def _video_folder(root: Path, make, classes: dict[str, object], train: int, test: int, frames: int) -> Path:
    """`root/data/{train,test}/<class>/<video>-f*.png` from `train` + `test` videos per class."""
    for c, (label, what) in enumerate(classes.items()):
        for split, count in (("train", train), ("test", test)):
            for k in range(count):
                seed = 1000 * c + 500 * (split == "test") + k
                clip = make(root / f"{label}-{split}-{k}.mp4", what, seed, frames)
                extract_frames(clip, label=label, out=root / "data" / split)
    return root / "data"


def _stems(images) -> set[str]:
    return {path.name.rsplit("-f", 1)[0] for path in (images.paths[i] for i in images.index)}


def test_group_rules_name_videos_sub_folders_and_regex_matches():
    assert group_of("cup", Path("clip1-f000123.png"), "auto") == "cup/clip1"
    assert group_of("cup", Path("a-b-f000001.png"), "auto") == "cup/a-b"
    assert group_of("cup", Path("IMG_0001.jpg"), "auto") is None  # a photo stands alone
    assert group_of("cup", Path("monday/IMG_0001.jpg"), "folder") == "monday"
    assert group_of("cup", Path("IMG_0001.jpg"), "folder") is None
    assert group_of("cup", Path("session3_0001.jpg"), r"regex:^[^_]+") == "session3"
    assert group_of("cup", Path("x/s7-12.jpg"), r"regex:s(\d+)-") == "7"
    assert group_of("cup", Path("clip1-f000123.png"), "none") is None
    for bad in ("video", "regex:", "regex:(unclosed"):
        with pytest.raises(ValueError):
            check_group_by(bad)
    with pytest.raises(graft.GraftError, match="group_by"):
        graft.train(data="digits", group_by="regex:(")


def test_grouped_split_keeps_groups_whole_and_is_stratified_split_without_groups():
    labels = np.repeat([0, 1], 40)
    groups = np.array([f"{label}/v{i // 8}" for i, label in enumerate(labels)], dtype=object)  # 5 videos per class
    train, valid = grouped_split(labels, groups, 0.2, seed=3)
    assert not set(groups[train]) & set(groups[valid])
    assert np.bincount(labels[valid]).tolist() == [8, 8]  # one whole video per class: 20 % of 40
    assert np.array_equal(np.sort(np.concatenate([train, valid])), np.arange(80))
    lone = np.array([f"\0{i}" for i in range(80)], dtype=object)
    for same in (None, lone):  # every image alone: exactly the split graft always made
        got = grouped_split(labels, same, 0.2, seed=3)
        want = stratified_split(labels, 0.2, seed=3)
        assert all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))
    one_video = np.array(["0/v"] * 40 + [f"1/v{i // 8}" for i in range(40)], dtype=object)
    _, valid = grouped_split(labels, one_video, 0.2, seed=0)
    # a class filmed in one video cannot be validated on another: the end of its video is held out
    assert valid[labels[valid] == 0].tolist() == list(range(32, 40))
    assert len(set(one_video[valid[labels[valid] == 1]])) == 1


def test_frames_of_a_video_never_straddle_train_and_valid(tmp_path):
    data = _video_folder(tmp_path, _noise_video, {"a": None, "b": None}, train=5, test=1, frames=6)
    lines: list[str] = []
    grouped = load_splits(f"folder:{data}", valid_fraction=0.2, seed=0, report=lines.append)
    assert not _stems(grouped.train) & _stems(grouped.valid)
    assert len(_stems(grouped.valid)) == 2 and len(grouped.valid) == 12  # one whole video of each class
    assert "valid split: 2 of 10 videos held out whole (--group-by auto)" in lines
    old = load_splits(f"folder:{data}", valid_fraction=0.2, seed=0, group_by="none")
    assert _stems(old.train) & _stems(old.valid), "the old split put frames of one video on both sides"
    # by sub-folder instead: each class's frames moved into one sub-folder per video
    for path in sorted(data.glob("train/*/*.png")):
        (path.parent / path.name.split("-f")[0]).mkdir(exist_ok=True)
        path.rename(path.parent / path.name.split("-f")[0] / f"{path.name.split('-f')[1]}")
    by_folder = load_splits(f"folder:{data}", valid_fraction=0.2, seed=0, group_by="folder")
    folders = [{p.parent.name for p in (s.paths[i] for i in s.index)} for s in (by_folder.train, by_folder.valid)]
    assert not folders[0] & folders[1] and len(folders[1]) == 2


def test_one_video_per_class_is_validated_on_its_end_and_said_so(tmp_path):
    data = _video_folder(tmp_path, _noise_video, {"a": None, "b": None}, train=1, test=1, frames=10)
    lines: list[str] = []
    splits = load_splits(f"folder:{data}", valid_fraction=0.2, seed=0, report=lines.append)
    names = sorted(splits.valid.paths[i].name for i in splits.valid.index)
    assert names == ["a-train-0-f000008.png", "a-train-0-f000009.png", "b-train-0-f000008.png", "b-train-0-f000009.png"]
    assert any(line.startswith("WARNING: a, b: one of the videos each") for line in lines), lines


def test_a_video_in_both_train_and_test_is_reported(tmp_path):
    data = _video_folder(tmp_path, _noise_video, {"a": None, "b": None}, train=2, test=0, frames=3)
    (data / "test" / "a").mkdir(parents=True)
    (data / "test" / "b").mkdir(parents=True)
    for name in ("a-train-0-f000000.png", "a-train-0-f000001.png"):
        (data / "train" / "a" / name).rename(data / "test" / "a" / name)
    for name in ("b-train-0-f000000.png",):
        (data / "train" / "b" / name).rename(data / "test" / "b" / name)
    lines: list[str] = []
    load_splits(f"folder:{data}", report=lines.append)
    assert any("2 videos have images in both train/ and test/" in line for line in lines), lines


def test_the_warning_weighs_the_gap_against_the_number_of_videos():
    assert valid_test_warning(1.0, 0.0, "none", 24, 60) is not None
    assert valid_test_warning(0.95, 0.9, "none", 24, 60) is None
    assert valid_test_warning(0.75, 0.4, "auto", 4, 60) is None  # 4 videos: 3 of 4 right is no evidence
    assert valid_test_warning(0.75, 0.4, "auto", 400, 600) is not None


SETTINGS = dict(model="resnet10t", size=16, batch_size=16, workers=0, precision="fp32", lr=3e-3, threads=1)


def test_grouped_validation_stops_the_leak_and_a_leaking_layout_gets_a_loud_warning(tmp_path, capsys):
    """Scenes that tell nothing about the class: memorised frames make a frame-level valid split ~100 % while new
    videos (test/) are a coin toss; held out by video, validation says what test says."""
    data = _video_folder(tmp_path, _noise_video, {"a": None, "b": None}, train=6, test=4, frames=6)
    leaky = graft.train(data=f"folder:{data}", group_by="none", epochs=4, run_dir=str(tmp_path / "old"), **SETTINGS)
    metrics = leaky.bundle.metrics
    assert metrics["valid_acc"] >= 0.9 and metrics["test_acc"] <= 0.7, metrics
    (warning,) = metrics["warnings"]
    assert "WARNING: valid accuracy" in warning and "--group-by" in warning
    assert warning in " ".join(capsys.readouterr().err.split())
    assert "WARNING" in (tmp_path / "old" / "report.html").read_text()

    honest = graft.train(data=f"folder:{data}", epochs=4, run_dir=str(tmp_path / "new"), **SETTINGS)
    metrics = honest.bundle.metrics
    assert abs(metrics["valid_acc"] - metrics["test_acc"]) <= 0.1 and metrics["valid_acc"] <= 0.7, metrics
    assert "warnings" not in metrics and "WARNING" not in capsys.readouterr().err
    assert honest.bundle.provenance.data.group_by == "auto"
    # graft eval rebuilds the same grouped split from the bundle's record
    assert graft.evaluate(honest.bundle.path, split="valid").accuracy == pytest.approx(metrics["valid_acc"])


def test_a_big_video_is_never_all_of_validation() -> None:
    # One 100-frame video and one 1-frame clip per class: whatever the seed, training keeps the big video.
    labels = np.repeat([0, 0, 1, 1], [100, 1, 100, 1])
    groups = np.array(["a"] * 100 + ["a1"] + ["b"] * 100 + ["b1"])
    for seed in range(6):
        train, held = grouped_split(labels, groups, 0.2, seed)
        assert np.bincount(labels[train], minlength=2).tolist() == [100, 100], seed
        assert np.bincount(labels[held], minlength=2).tolist() == [1, 1], seed


def test_a_group_name_shared_by_every_class_still_holds_out_every_class() -> None:
    # --group-by folder with cup/monday, mug/monday, bowl/monday, …: each class is held out from its own folders.
    labels = np.repeat([0, 1, 2], 30)
    groups = np.array([day for _ in range(3) for day in ["monday"] * 10 + ["tuesday"] * 10 + ["friday"] * 10])
    train, held = grouped_split(labels, groups, 0.2, seed=0)
    assert sorted(set(labels[held].tolist())) == [0, 1, 2] and sorted(set(labels[train].tolist())) == [0, 1, 2]
    for c in range(3):  # whole folders per class
        held_days = set(groups[held][labels[held] == c].tolist())
        assert not held_days & set(groups[train][labels[train] == c].tolist())


def test_max_valid_and_max_test_keep_every_class_and_take_exactly_the_limit() -> None:
    from graft.data.split import stratified_sample

    labels = np.array([0] * 50 + [1] * 50 + [2])
    sample = stratified_sample(labels, 60, seed=0)
    assert len(sample) == 60 and np.bincount(labels[sample]).tolist() == [30, 29, 1]
    one_each = np.repeat(np.arange(10), 1)
    assert len(stratified_sample(one_each, 5, seed=0)) == 5
    assert len(stratified_sample(labels, 1000, seed=0)) == len(labels)
