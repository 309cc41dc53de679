"""Data sources, deterministic splits and the one preprocessing path."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from graft.data import load_source, load_splits, split_train_valid
from graft.data.base import ArrayImages
from graft.data.idx import read_idx
from graft.data.preprocess import convert_channels, resize_uint8, to_model_input
from graft.errors import GraftError
from graft.spec import InputSpec


def test_digits_is_real_and_offline():
    pool, test = load_source("digits")
    assert pool.channels == 1 and pool.image(0).shape == (8, 8, 1) and pool.image(0).dtype == np.uint8
    assert len(pool) + len(test) == 1797
    assert set(np.unique(test.labels)) == set(range(10))
    assert int(pool.image(0).max()) > 200, "scaled from 0..16 to 0..255"


def test_split_is_deterministic_disjoint_and_stratified():
    pool, _ = load_source("digits")
    a_train, a_valid = split_train_valid(pool, 0.2, seed=3)
    b_train, b_valid = split_train_valid(pool, 0.2, seed=3)
    c_train, _ = split_train_valid(pool, 0.2, seed=4)
    assert np.array_equal(a_train.index, b_train.index) and np.array_equal(a_valid.index, b_valid.index)
    assert not np.array_equal(a_train.index, c_train.index)
    assert set(a_train.index).isdisjoint(a_valid.index)
    assert sorted([*a_train.index, *a_valid.index]) == sorted(pool.index)
    assert len(a_valid) == round(0.2 * len(pool))
    shares = np.bincount(a_valid.labels, minlength=10) / np.bincount(pool.labels, minlength=10)
    assert np.all(np.abs(shares - 0.2) < 0.03)


def test_test_split_does_not_depend_on_the_training_seed():
    one, two = load_splits("digits", seed=1), load_splits("digits", seed=2)
    assert np.array_equal(one.test.index, two.test.index)


def test_unknown_source_suggests_close_names():
    with pytest.raises(GraftError, match="did you mean mnist"):
        load_source("mnsit")


def test_missing_mnist_offline_names_files_and_variable(tmp_path):
    with pytest.raises(GraftError) as caught:
        load_source("mnist", tmp_path, download=False)
    message = str(caught.value)
    assert "train-images-idx3-ubyte.gz" in message and "GRAFT_DATA" in message and "--data-root" in message
    assert "\n" not in message


def test_offline_error_lists_only_the_missing_files(tmp_path):
    def idx(values: np.ndarray) -> bytes:
        dims = b"".join(int(d).to_bytes(4, "big") for d in values.shape)
        return bytes([0, 0, 8, values.ndim]) + dims + values.tobytes()

    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    (folder / "train-images-idx3-ubyte").write_bytes(idx(np.zeros((2, 28, 28), np.uint8)))
    (folder / "train-labels-idx1-ubyte").write_bytes(idx(np.zeros(2, np.uint8)))
    with pytest.raises(GraftError) as caught:
        load_source("fashion-mnist", tmp_path, download=False)
    message = str(caught.value)
    assert "t10k-images-idx3-ubyte.gz" in message and "t10k-labels-idx1-ubyte.gz" in message
    assert "train-images" not in message and "train-labels" not in message
    assert "2 of the 4 files are there" in message


def test_corrupt_local_file_is_refused(tmp_path):
    (tmp_path / "mnist").mkdir()
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        (tmp_path / "mnist" / name).write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x00"))
    with pytest.raises(GraftError, match="corrupt"):
        load_source("mnist", tmp_path, download=False)


def test_idx_reader_plain_and_gzipped(tmp_path):
    values = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    raw = bytes([0, 0, 8, 3]) + b"".join(int(d).to_bytes(4, "big") for d in values.shape) + values.tobytes()
    (tmp_path / "x").write_bytes(raw)
    (tmp_path / "x.gz").write_bytes(gzip.compress(raw))
    assert np.array_equal(read_idx(tmp_path / "x"), values)
    assert np.array_equal(read_idx(tmp_path / "x.gz"), values)


def test_mnist_from_shared_files(mnist_root):
    splits = load_splits("mnist", mnist_root, download=False)
    assert (len(splits.train), len(splits.valid), len(splits.test)) == (48000, 12000, 10000)
    assert splits.train.image(0).shape == (28, 28, 1)
    assert splits.classes == [str(d) for d in range(10)]


def _spec(channels=3, size=(20, 20), mode="replicate", **kw) -> InputSpec:
    mean, std = ((0.5, 0.4, 0.3), (0.2, 0.3, 0.4)) if channels == 3 else ((0.0,), (1.0,))
    return InputSpec(size=size, channels=channels, mode=mode, mean=mean, std=std, **kw)


def test_batched_resize_equals_one_by_one():
    images = torch.randint(0, 256, (6, 1, 28, 28), dtype=torch.uint8)
    spec = _spec()
    batched = resize_uint8(images, spec)
    single = torch.cat([resize_uint8(images[i : i + 1], spec) for i in range(6)])
    assert batched.dtype == torch.uint8 and torch.equal(batched, single)


def test_array_batch_equals_generic_batch():
    rng = np.random.default_rng(0)
    images = ArrayImages("x", rng.integers(0, 256, (10, 28, 28, 1), dtype=np.uint8), np.arange(10) % 3, list("abc"))
    spec, positions = _spec(size=(17, 23)), np.array([4, 1, 7])
    fast = images.batch(positions, spec)
    generic = super(ArrayImages, images).batch(positions, spec)
    assert torch.equal(fast, generic) and fast.shape == (3, 1, 17, 23)


def test_channel_rules():
    gray = torch.rand(2, 1, 4, 4)
    rgb = torch.rand(2, 3, 4, 4)
    assert torch.equal(convert_channels(gray, 3), gray.expand(-1, 3, -1, -1))
    luma = 0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]
    assert torch.allclose(convert_channels(rgb, 1)[:, 0], luma)
    four = torch.rand(2, 4, 4, 4)
    assert torch.allclose(convert_channels(four, 1), four.mean(dim=1, keepdim=True))
    with pytest.raises(ValueError, match="no rule"):
        convert_channels(torch.rand(1, 4, 2, 2), 3)


def test_model_input_normalises_by_spec():
    images = torch.full((1, 1, 8, 8), 255, dtype=torch.uint8)
    x = to_model_input(images, _spec(size=(8, 8)))
    assert x.shape == (1, 3, 8, 8) and x.dtype == torch.float32
    assert torch.allclose(x[0, :, 0, 0], (1 - torch.tensor([0.5, 0.4, 0.3])) / torch.tensor([0.2, 0.3, 0.4]))
    with pytest.raises(TypeError):
        to_model_input(images.float(), _spec())


def test_crop_rule_keeps_aspect():
    wide = torch.zeros(1, 1, 10, 40, dtype=torch.uint8)
    wide[..., 15:25] = 255  # a bright centre band survives a centre crop
    out = resize_uint8(wide, _spec(size=(10, 10), resize="crop"))
    assert out.shape == (1, 1, 10, 10) and out.float().mean() > 200


def test_batch_count_matches_the_batches():
    from graft.data.loader import batch_order, count_batches

    for n in (1, 5, 63, 64, 65, 200):
        for drop_last in (False, True):
            assert count_batches(n, 64, drop_last=drop_last) == len(
                batch_order(n, 64, shuffle=True, drop_last=drop_last)
            )


def test_every_class_keeps_a_training_image():
    from graft.data import stratified_split

    labels = np.array([0] * 10 + [1] + [2] * 2)
    keep, _ = stratified_split(labels, 0.5, seed=0)
    assert set(labels[keep]) == {0, 1, 2}


def test_decoding_errors_in_loader_workers_stay_one_line(tmp_path):
    from PIL import Image

    from graft.data.folder import scan_folder
    from graft.data.loader import iter_batches

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(4):
            Image.new("L", (10, 10), 40 * i).save(tmp_path / name / f"{i}.png")
    images = scan_folder(tmp_path).train
    (tmp_path / "b" / "3.png").write_bytes(b"gone bad after the scan")
    with pytest.raises(GraftError) as caught:
        list(iter_batches(images, _spec(channels=1, mode="fold"), 2, workers=1))
    assert "3.png" in str(caught.value) and "\n" not in str(caught.value) and "DataLoader" not in str(caught.value)
