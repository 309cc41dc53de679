"""Keras layer graphs → graft: logits equal Keras's own (max |Δ| ≤ 1e-4) per layer type and per file format."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

import graft
from graft.errors import GraftError
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


def _model(shape, body) -> keras.Model:
    inp = keras.Input(shape)
    return keras.Model(inp, body(inp))


def _head(x, classes: int = 5):
    return L.Dense(classes)(L.Flatten()(x))


CASES = {
    "conv_same_stride2_odd": (
        (15, 15, 3),
        lambda x: _head(L.Conv2D(4, 3, strides=2, padding="same", activation="relu")(x)),
    ),
    "conv_same_stride2_even": ((16, 16, 3), lambda x: _head(L.Conv2D(4, 5, strides=2, padding="same")(x))),
    "conv_valid_dilated_nobias": ((12, 12, 3), lambda x: _head(L.Conv2D(3, 3, dilation_rate=2, use_bias=False)(x))),
    "conv_grouped": ((10, 10, 3), lambda x: _head(L.Conv2D(6, 3, groups=2, activation="tanh")(L.Conv2D(4, 1)(x)))),
    "depthwise": ((13, 13, 3), lambda x: _head(L.DepthwiseConv2D(3, strides=2, padding="same", depth_multiplier=2)(x))),
    "separable": ((11, 11, 3), lambda x: _head(L.SeparableConv2D(5, 3, padding="same", depth_multiplier=2)(x))),
    "batchnorm": ((8, 8, 3), lambda x: _head(L.BatchNormalization(epsilon=1e-2)(L.Conv2D(4, 3)(x)))),
    "batchnorm_dense": ((6, 6, 3), lambda x: L.Dense(3)(L.BatchNormalization()(L.Dense(7)(L.Flatten()(x))))),
    "maxpool_same": ((11, 11, 3), lambda x: _head(L.MaxPooling2D(3, strides=2, padding="same")(x))),
    "maxpool_valid": ((12, 12, 3), lambda x: _head(L.MaxPooling2D(2)(x))),
    "avgpool_same": ((11, 11, 3), lambda x: _head(L.AveragePooling2D(3, strides=2, padding="same")(x))),
    "avgpool_valid": ((12, 12, 3), lambda x: _head(L.AveragePooling2D((2, 3))(x))),
    "global_avg": ((9, 9, 3), lambda x: L.Dense(4)(L.GlobalAveragePooling2D()(L.Conv2D(6, 3)(x)))),
    "global_max_keepdims": ((9, 9, 3), lambda x: _head(L.GlobalMaxPooling2D(keepdims=True)(L.Conv2D(6, 3)(x)))),
    "flatten_order": ((5, 7, 3), lambda x: L.Dense(6)(L.Flatten()(L.Conv2D(4, 1)(x)))),
    "dropout": ((8, 8, 3), lambda x: _head(L.Dropout(0.5)(L.SpatialDropout2D(0.3)(L.Conv2D(2, 3)(x))))),
    "activations": (
        (8, 8, 3),
        lambda x: _head(
            L.Activation("gelu")(
                L.Activation("swish")(
                    L.Activation("elu")(L.Activation("sigmoid")(L.Conv2D(4, 3, activation="softplus")(x)))
                )
            )
        ),
    ),
    "relu_layer": (
        (8, 8, 3),
        lambda x: _head(L.ReLU(max_value=0.8, negative_slope=0.1, threshold=0.2)(L.Conv2D(4, 3)(x))),
    ),
    "leaky_relu": ((8, 8, 3), lambda x: _head(L.LeakyReLU(negative_slope=0.2)(L.Conv2D(4, 3)(x)))),
    "softmax_channels": ((8, 8, 3), lambda x: _head(L.Softmax()(L.Conv2D(4, 3)(x)))),
    "zero_padding": ((7, 7, 3), lambda x: _head(L.Conv2D(2, 3)(L.ZeroPadding2D(((1, 2), (0, 3)))(x)))),
    "add_concat": (
        (8, 8, 3),
        lambda x: _head(L.Concatenate()([L.Add()([L.Conv2D(4, 1)(x), L.Conv2D(4, 1)(x)]), L.Conv2D(2, 1)(x)])),
    ),
    "other_merges": (
        (6, 6, 3),
        lambda x: _head(
            L.Maximum()(
                [L.Multiply()([L.Conv2D(3, 1)(x), x]), L.Subtract()([x, L.Conv2D(3, 1)(x)]), L.Average()([x, x])]
            )
        ),
    ),
    "rescaling": ((8, 8, 3), lambda x: _head(L.Conv2D(2, 3)(L.Rescaling(1 / 127.5, offset=-1)(x)))),
    "reshape": (
        (4, 4, 3),
        lambda x: L.Dense(3)(L.Reshape((32,))(L.Conv2D(2, 1)(L.Reshape((2, 8, 4))(L.Conv2D(4, 1)(x))))),
    ),
    "reshape_rank3": ((4, 4, 3), lambda x: L.Dense(3)(L.Flatten()(L.Dense(3)(L.Reshape((16, 3))(x))))),
    "dense_on_channels": ((5, 5, 3), lambda x: _head(L.Dense(4, activation="relu")(x))),
    "gray_input": ((12, 12, 1), lambda x: _head(L.MaxPooling2D()(L.Conv2D(4, 3, activation="relu")(x)))),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_layer_parity(case, tmp_path):
    shape, body = CASES[case]
    model = _model(shape, body)
    randomise(model, seed=len(case))
    path = tmp_path / "m.keras"
    model.save(path)
    bundle = graft.import_keras(path)
    assert bundle.architecture.graph is not None and bundle.spec.channels == shape[-1]
    x, other = random_images(3, *shape, seed=1), random_images(3, *shape, seed=2)
    error = assert_parity(graft_out(bundle, x), keras_out(model, x), keras_out(model, other))
    print(f"{case}: relative error {error:.2e}")


def _rich_model(classes: int = 4) -> keras.Model:
    inp = keras.Input((14, 14, 3))
    x = L.Conv2D(6, 3, strides=2, padding="same", use_bias=False)(inp)
    x = L.BatchNormalization()(x)
    x = L.ReLU(6.0)(x)
    y = L.DepthwiseConv2D(3, padding="same")(x)
    x = L.Add()([x, y])
    x = L.SeparableConv2D(8, 3, padding="same", activation="relu")(x)
    x = L.MaxPooling2D()(x)
    x = L.Flatten()(x)
    x = L.Dropout(0.2)(x)
    out = L.Dense(classes, activation="softmax")(x)
    model = keras.Model(inp, out)
    randomise(model, seed=3)
    return model


def _legacy_weights_h5(model, path) -> None:
    """A Keras 2 `save_weights("w.h5")` file (layer_names / weight_names), written with Keras's own legacy code."""
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, model)


@pytest.mark.parametrize("fmt", ["keras", "h5", "weights_h5+json", "legacy_weights_h5+json", "weights_h5+keras"])
def test_file_formats(fmt, tmp_path):
    model = _rich_model()
    architecture = None
    if fmt == "keras":
        path = tmp_path / "m.keras"
        model.save(path)
    elif fmt == "h5":
        path = tmp_path / "m.h5"
        model.save(path)
    else:
        if fmt.startswith("legacy"):
            path = tmp_path / "w.h5"
            _legacy_weights_h5(model, path)
        else:
            path = tmp_path / "w.weights.h5"
            model.save_weights(path)
        if fmt.endswith("json"):
            architecture = tmp_path / "arch.json"
            architecture.write_text(model.to_json())
        else:
            architecture = tmp_path / "arch.keras"
            model.save(architecture)
    bundle = graft.import_keras(path, tmp_path / "bundle", architecture=architecture, classes="a,b,c,d")
    assert any("softmax" in note for note in bundle.provenance.keras.notes)
    loaded = graft.load(tmp_path / "bundle")
    assert loaded.classes == ["a", "b", "c", "d"]
    x, other = random_images(3, 14, 14, seed=2), random_images(3, 14, 14, seed=3)
    probs = np.asarray(keras_out(model, x))
    logits = graft_out(loaded, x)
    ours = np.exp(logits - logits.max(1, keepdims=True))
    ours /= ours.sum(1, keepdims=True)
    error = assert_parity(ours, probs, np.asarray(keras_out(model, other)))
    print(f"{fmt}: max |Δ probability| {error:.2e}")


def test_sequential_with_rescaling_gets_raw_preprocessing_and_predicts(tmp_path):
    model = keras.Sequential(
        [keras.Input((8, 8, 1)), L.Rescaling(1 / 255), L.Conv2D(3, 3, activation="relu"), L.Flatten(), L.Dense(3)]
    )
    randomise(model)
    model.save(tmp_path / "s.keras")
    bundle = graft.import_keras(tmp_path / "s.keras", tmp_path / "b")
    assert bundle.provenance.keras.preprocess == "raw" and bundle.spec.channels == 1
    images = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 1), dtype=np.uint8)
    expected = keras_out(model, images.astype("float32"))
    other = keras_out(model, images[::-1, ::-1].astype("float32"))
    loaded = graft.load(tmp_path / "b")
    got = np.concatenate([graft_out_spec(loaded, image) for image in images])
    assert_parity(got, expected, other)
    assert loaded.predict(images[0], top_k=1)[0].classes[0] in loaded.classes


def graft_out_spec(bundle, image: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return bundle.model(bundle.model_input(image)).numpy()


def test_graph_description_is_plain_json(tmp_path):
    model = _rich_model()
    model.save(tmp_path / "m.keras")
    graft.import_keras(tmp_path / "m.keras", tmp_path / "b")
    meta = json.loads((tmp_path / "b" / "graft.json").read_text())
    graph = meta["architecture"]["graph"]
    assert graph["format"] == "graft.keras-graph"
    assert [layer["type"] for layer in graph["layers"]][:3] == ["Conv2D", "BatchNormalization", "ReLU"]
    assert not list(tmp_path.glob("b/*.pkl"))


def test_unsupported_layers_are_all_listed(tmp_path):
    inp = keras.Input((8, 8, 3))
    x = L.Conv2DTranspose(2, 3)(inp)
    x = L.LayerNormalization()(x)
    model = keras.Model(inp, L.Dense(2)(L.Flatten()(x)))
    model.save(tmp_path / "m.keras")
    with pytest.raises(GraftError, match=r"Conv2DTranspose \(conv2d_transpose.*\).*LayerNormalization"):
        graft.import_keras(tmp_path / "m.keras", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bad_files_are_one_line_errors(tmp_path):
    text = tmp_path / "notes.h5"
    text.write_text("not a model")
    with pytest.raises(GraftError, match="not a Keras file"):
        graft.import_keras(text)
    model = _rich_model()
    model.save(tmp_path / "m.h5")
    damaged = tmp_path / "damaged.h5"
    damaged.write_bytes((tmp_path / "m.h5").read_bytes()[:3000])
    with pytest.raises(GraftError, match=r"damaged|not a Keras"):
        graft.import_keras(damaged, tmp_path / "out")
    model.save(tmp_path / "m.keras")
    broken = tmp_path / "broken.keras"
    broken.write_bytes((tmp_path / "m.keras").read_bytes()[:-200])
    with pytest.raises(GraftError):
        graft.import_keras(broken, tmp_path / "out")
    model.save_weights(tmp_path / "w.weights.h5")
    with pytest.raises(GraftError, match="weights only"):
        graft.import_keras(tmp_path / "w.weights.h5", tmp_path / "out")
    with pytest.raises(GraftError, match="class names"):
        graft.import_keras(tmp_path / "m.keras", tmp_path / "out", classes="a,b")
    assert not (tmp_path / "out").exists()


def test_layer_graph_bundle_fine_tunes(tmp_path):
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            L.Conv2D(8, 3, padding="same", activation="relu", name="conv"),
            L.Flatten(),
            L.Dense(4, name="head"),
        ]
    )
    randomise(model)
    model.save(tmp_path / "m.keras")
    graft.import_keras(tmp_path / "m.keras", tmp_path / "imported")
    settings = dict(data="digits", weights=str(tmp_path / "imported"), epochs=1, batch_size=32, max_train=128)
    with pytest.raises(GraftError, match="replicate"):
        graft.train(**settings, size=8, input_mode="fold", run_dir=str(tmp_path / "r1"), workers=0, threads=1)
    # Without --size the bundle is continued at its own size (8×8).
    result = graft.train(**settings, run_dir=str(tmp_path / "run"), output=str(tmp_path / "b"), workers=0, threads=1)
    arch = result.bundle.architecture
    assert (
        arch.timm_name == "keras-graph" and arch.num_classes == 10 and arch.graph["layers"][-1]["config"]["units"] == 10
    )
    transfer = result.bundle.provenance.transfer
    assert "backbone.layers.conv.weight" in transfer.loaded
    assert {s["name"] for s in transfer.skipped} == {"backbone.layers.head.weight", "backbone.layers.head.bias"}
    assert graft.load(tmp_path / "b").spec.channels == 1


@pytest.mark.parametrize("mode", ["caffe", "tf", "torch", "unit"])
def test_preprocessing_modes_of_a_layer_graph(mode, tmp_path):
    """The input spec (and, for caffe, the BGR flip) reproduces Keras's preprocess_input from uint8 RGB images."""
    from keras.src.applications.imagenet_utils import preprocess_input

    model = _model((10, 10, 3), lambda x: L.Dense(3)(L.GlobalAveragePooling2D()(L.Conv2D(4, 3)(x))))
    randomise(model, seed=5)
    model.save(tmp_path / "m.keras")
    bundle = graft.import_keras(tmp_path / "m.keras", preprocess=mode)
    assert bundle.architecture.graph["input_order"] == ("bgr" if mode == "caffe" else "rgb")
    images = np.random.default_rng(0).integers(0, 256, (2, 10, 10, 3), dtype=np.uint8)
    floats = images.astype("float32")
    prepared = floats / 255 if mode == "unit" else preprocess_input(floats, data_format="channels_last", mode=mode)
    expected = keras_out(model, np.asarray(prepared))
    other = keras_out(model, np.asarray(prepared)[::-1, ::-1].copy())
    got = np.concatenate([graft_out_spec(bundle, image) for image in images])
    assert_parity(got, expected, other)


def _nested_models() -> dict[str, keras.Model]:
    inner = keras.Sequential([keras.Input((12, 12, 3)), L.Conv2D(4, 3, name="c1"), L.BatchNormalization()], name="base")
    seq = keras.Sequential([keras.Input((12, 12, 3)), inner, L.Flatten(), L.Dense(3)], name="outer_seq")
    app = keras.applications.MobileNetV2((32, 32, 3), alpha=0.35, include_top=False, weights=None)
    transfer = keras.Sequential([keras.Input((32, 32, 3)), app, L.GlobalAveragePooling2D(), L.Dense(4)])
    inp = keras.Input((12, 12, 3))
    block = keras.Model(inp, L.Add()([L.Conv2D(3, 1)(inp), inp]), name="block")
    outer_in = keras.Input((12, 12, 3))
    functional = keras.Model(outer_in, L.Dense(2)(L.GlobalMaxPooling2D()(block(L.ReLU()(outer_in)))))
    return {"sequential_in_sequential": seq, "application_base": transfer, "model_called_in_functional": functional}


@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_nested_models_are_inlined(fmt, tmp_path):
    for name, model in _nested_models().items():
        randomise(model, seed=7)
        for layer in model.layers:
            if isinstance(layer, keras.Model):
                randomise(layer, seed=8)
        path = tmp_path / f"{name}.{fmt}"
        model.save(path)
        bundle = graft.import_keras(path)
        assert bundle.architecture.graph is not None
        shape = tuple(model.input_shape[1:])
        x, other = random_images(2, *shape, seed=3), random_images(2, *shape, seed=4)
        error = assert_parity(graft_out(bundle, x), keras_out(model, x), keras_out(model, other))
        print(f"nested {name} ({fmt}): relative error {error:.2e}")


def test_binary_sigmoid_classifier_becomes_two_logits(tmp_path):
    model = _model((8, 8, 3), lambda x: L.Dense(1, activation="sigmoid")(L.GlobalAveragePooling2D()(L.Conv2D(4, 3)(x))))
    randomise(model, seed=9)
    model.save(tmp_path / "m.keras")
    bundle = graft.import_keras(tmp_path / "m.keras", classes="cat,dog")
    assert "two logits" in bundle.provenance.keras.notes[0]
    x, other = random_images(4, 8, 8, seed=4), random_images(4, 8, 8, seed=5)
    logits = graft_out(bundle, x)
    p_dog = 1 / (1 + np.exp(logits[:, 0] - logits[:, 1]))
    assert_parity(p_dog, keras_out(model, x)[:, 0], keras_out(model, other)[:, 0])
