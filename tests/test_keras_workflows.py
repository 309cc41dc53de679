"""A Keras user's workflow end to end (issue 15): compiled-and-fitted models from every format Keras 3 writes,
models nested two deep, channel counts, non-square graphs, fine-tuning graphs that end in a 1×1 conv, and the
SavedModel directory a TensorFlow user may pass."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

import graft
from graft.errors import GraftError
from graft.models.keras.finetune import retarget
from graft.models.keras.graph import layer_kind
from keras_helpers import (
    assert_parity,
    graft_out,
    keras,
    keras_out,
    one_thread,  # noqa: F401  (autouse: one torch thread)
    random_images,
    randomise,
)

L = keras.layers


def test_a_compiled_and_fitted_model_imports_from_every_format(tmp_path):
    model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            L.RandomFlip(),
            L.Conv2D(4, 3),
            L.BatchNormalization(),
            L.Dropout(0.2),
            L.Flatten(),
            L.Dense(3),
        ]
    )
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    rng = np.random.default_rng(0)
    model.fit(rng.uniform(0, 1, (16, 8, 8, 3)), np.arange(16) % 3, epochs=2, verbose=0)
    model.save(tmp_path / "m.keras")
    model.save(tmp_path / "m.h5")
    model.save_weights(tmp_path / "m.weights.h5")
    x1, x2 = random_images(4, 8, 8, seed=1), random_images(4, 8, 8, seed=2)
    expected, other = keras_out(model, x1), keras_out(model, x2)
    for source, architecture in (("m.keras", None), ("m.h5", None), ("m.weights.h5", "m.keras")):
        bundle = graft.import_keras(tmp_path / source, architecture=architecture and tmp_path / architecture)
        assert_parity(graft_out(bundle, x1), expected, other)


@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_a_model_nested_two_deep_imports(fmt, tmp_path):
    inner = keras.Sequential([keras.Input((8, 8, 3)), L.Conv2D(4, 3, name="c1")], name="inner")
    middle = keras.Sequential([keras.Input((8, 8, 3)), inner, L.Conv2D(4, 3, name="c2")], name="middle")
    x = keras.Input((8, 8, 3))
    model = keras.Model(x, L.Dense(3, name="d")(L.Flatten()(middle(x))))
    randomise(model, seed=2)
    model.save(tmp_path / f"m.{fmt}")
    bundle = graft.import_keras(tmp_path / f"m.{fmt}")
    x1, x2 = random_images(2, 8, 8, seed=1), random_images(2, 8, 8, seed=2)
    assert_parity(graft_out(bundle, x1), keras_out(model, x1), keras_out(model, x2))


def test_a_two_channel_model_is_refused_at_import(tmp_path):
    model = keras.Sequential([keras.Input((8, 8, 2)), L.Conv2D(2, 3), L.Flatten(), L.Dense(3)])
    model.save(tmp_path / "m.keras")
    with pytest.raises(GraftError, match="1- or 3-channel"):
        graft.import_keras(tmp_path / "m.keras", tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_a_savedmodel_directory_is_named_with_what_to_do(tmp_path):
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "saved_model.pb").write_bytes(b"\x08\x01")
    with pytest.raises(GraftError, match=r"SavedModel directory.*model\.save\(\"model\.keras\"\)"):
        graft.import_keras(tmp_path / "export")


def _train(bundle_dir, tmp_path, **kwargs):
    return graft.train(
        data="digits",
        weights=str(bundle_dir),
        input_mode="replicate",
        epochs=1,
        batch_size=32,
        max_train=64,
        run_dir=str(tmp_path / "run"),
        output=str(tmp_path / "trained"),
        workers=0,
        threads=1,
        **kwargs,
    )


def test_a_non_square_layer_graph_continues_at_its_size(tmp_path):
    model = keras.Sequential([keras.Input((35, 33, 3)), L.Conv2D(2, 3, strides=4), L.Flatten(), L.Dense(10)])
    model.save(tmp_path / "m.keras")
    graft.import_keras(tmp_path / "m.keras", tmp_path / "imported")
    result = _train(tmp_path / "imported", tmp_path)
    assert result.bundle.spec.size == (35, 33)


def test_a_graph_ending_in_a_1x1_conv_fine_tunes(tmp_path):
    # Keras's MobileNet head: pooled features → 1×1 conv → Reshape((classes,)) → Activation
    x = keras.Input((16, 16, 3))
    y = L.GlobalAveragePooling2D(keepdims=True)(L.Conv2D(8, 3, strides=2, activation="relu")(x))
    y = L.Conv2D(5, 1, name="conv_preds")(L.Dropout(0.1)(y))
    model = keras.Model(x, L.Activation("softmax", name="predictions")(L.Reshape((5,))(y)))
    model.save(tmp_path / "m.keras")
    imported = graft.import_keras(tmp_path / "m.keras", tmp_path / "imported")
    assert imported.model.backbone.get_classifier() is imported.model.backbone.layers["conv_preds"]
    result = _train(tmp_path / "imported", tmp_path, size=16)
    assert result.bundle.architecture.num_classes == 10
    transfer = result.bundle.provenance.transfer
    assert sorted(k["name"] for k in transfer.skipped) == [
        f"backbone.layers.conv_preds.{p}" for p in ("bias", "weight")
    ]
    probe = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    assert len(result.bundle.predict(probe, top_k=10)[0].classes) == 10


def test_a_graph_without_a_logits_layer_is_refused_with_the_reason():
    graph = {
        "output": "pool",
        "layers": [
            {"name": "conv", "key": "conv", "type": "Conv2D", "inputs": ["in"], "config": {"kernel_size": [3, 3]}},
            {"name": "pool", "key": "pool", "type": "GlobalAveragePooling2D", "inputs": ["conv"], "config": {}},
        ],
    }
    with pytest.raises(GraftError, match="no layer that makes its class logits"):
        retarget(graph, 4)


def _rewrite_weights(archive: Path, target: Path, extra: str) -> None:
    """A copy of a .keras archive whose weights file also holds the group `extra` (one array)."""
    import h5py

    with zipfile.ZipFile(archive) as source, zipfile.ZipFile(target, "w") as out:
        for item in source.namelist():
            data = source.read(item)
            if item == "model.weights.h5":
                buffer = io.BytesIO(data)
                with h5py.File(buffer, "a") as handle:
                    handle.create_dataset(f"{extra}/vars/0", data=np.zeros(3, np.float32))
                data = buffer.getvalue()
            out.writestr(item, data)


def test_training_state_is_skipped_and_nothing_else(tmp_path):
    """Keras 2.15 `.keras` files after `fit` hold `metrics/<name>/vars`; those are counters, not weights. An array
    under any other name that belongs to no layer is still refused."""
    model = keras.Sequential([keras.Input((6, 6, 3)), L.Conv2D(2, 3), L.Flatten(), L.Dense(3)])
    randomise(model)
    model.save(tmp_path / "m.keras")
    _rewrite_weights(tmp_path / "m.keras", tmp_path / "metrics.keras", "metrics/mean")
    x1, x2 = random_images(2, 6, 6, seed=1), random_images(2, 6, 6, seed=2)
    bundle = graft.import_keras(tmp_path / "metrics.keras")
    assert_parity(graft_out(bundle, x1), keras_out(model, x1), keras_out(model, x2))
    _rewrite_weights(tmp_path / "m.keras", tmp_path / "stray.keras", "layers/ghost")
    with pytest.raises(GraftError, match="ghost"):
        graft.import_keras(tmp_path / "stray.keras")


def test_a_keras_2_nested_model_config_is_not_taken_for_an_operation():
    """Keras 2 writes a nested Sequential's config as {name, layers}: no trainable/dtype, like a Keras 3 operation
    in legacy .h5, but it lists layers."""
    nested = {"class_name": "Sequential", "config": {"name": "base", "layers": []}}
    assert layer_kind(nested) == "Sequential"
    assert layer_kind({"class_name": "Add", "config": {"name": "add"}}) == "ops.Add"
    assert layer_kind({"class_name": "Add", "config": {"name": "add", "trainable": True}}) == "Add"
    custom = {"class_name": "Add", "module": "mine.layers", "config": {"name": "a", "trainable": True, "dtype": "f"}}
    assert layer_kind(custom) == "mine.layers.Add"


@pytest.mark.parametrize(
    ("names", "first", "mode"),
    [
        (("block1_conv1", "block5_conv3", "block5_pool", "fc1"), {}, "caffe"),  # VGG16/19
        (("conv1_conv", "conv4_block23_3_bn", "conv5_block3_3_bn"), {}, "caffe"),  # ResNet101/152
        (("conv1_conv", "conv5_block3_3_bn", "post_bn"), {}, "tf"),  # ResNet50V2…
        (("block1_conv1", "block14_sepconv2"), {}, "tf"),  # Xception
        (("mixed9", "mixed10"), {}, "tf"),  # InceptionV3
        (("conv",), {"kind": "Normalization", "mean": [123.7, 116.3, 103.5]}, "raw"),  # ConvNeXt
        (("conv",), {"kind": "Normalization", "mean": [0.5, 0.4, 0.4]}, "unit"),
    ],
)
def test_applications_without_a_timm_mapping_get_their_preprocessing(names, first, mode):
    from graft.keras_import import _preprocess_mode
    from graft.models.keras.graph import Node

    kind = first.pop("kind", "Conv2D")
    nodes = [Node("first", kind, first, ["input"]), *(Node(n, "Conv2D", {}, ["first"]) for n in names)]
    assert _preprocess_mode(None, None, nodes, (32, 32, 3)) == mode
