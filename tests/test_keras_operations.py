"""Keras 3 operations saved as layers (`x + 3.0`, `ops.maximum`, `ops.reshape`, `ops.mean`…), gelu, and the
layers added for issue 15: each imported from .keras and legacy .h5 equals Keras, or is refused by its name."""

from __future__ import annotations

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
ops = keras.ops


def _operations_model():
    x = keras.Input((6, 5, 3))
    a = L.Conv2D(4, 3, padding="same", name="a")(x)
    b = L.Conv2D(4, 1, name="b")(x)
    y = (a + 3.0) * (1.0 / 6.0)  # MobileNetV3's hard sigmoid: constants the merge layers would drop
    y = ops.maximum(y, 0.1) - 1.0
    y = ops.minimum(2.0 - y, b) / 2.0
    y = ops.clip(y * b, -1.5, 1.5) + ops.mean(b, axis=-1, keepdims=True)
    y = ops.gelu(y) + ops.gelu(b, approximate=False) - ops.expand_dims(ops.average(b, axis=-1), -1)
    y = ops.reshape(y, (-1, 5, 6, 4))  # the NHWC view, as Keras reshapes it
    y = ops.mean(y, axis=[1, 2])
    return keras.Model(x, L.Dense(3, name="head")(y))


@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_operations_with_constants_match_keras(fmt, tmp_path):
    model = _operations_model()
    randomise(model, seed=3)
    model.save(tmp_path / f"m.{fmt}")
    bundle = graft.import_keras(tmp_path / f"m.{fmt}")
    types = {layer["type"] for layer in bundle.architecture.graph["layers"]}
    assert {"ops.Add", "ops.Multiply", "ops.Maximum", "ops.Subtract", "ops.Reshape", "ops.Mean"} <= types
    assert not {"Add", "Multiply", "Maximum", "Minimum", "Subtract"} & types  # never read as merge layers
    x1, x2 = random_images(2, 6, 5, seed=1) * 3, random_images(2, 6, 5, seed=2) * 3
    assert_parity(graft_out(bundle, x1), keras_out(model, x1), keras_out(model, x2))


def test_unknown_operations_are_refused_by_name(tmp_path):
    x = keras.Input((4, 4, 3))
    y = ops.cumsum(L.Conv2D(2, 1)(x), axis=1)
    y = ops.sort(y, axis=-1)
    model = keras.Model(x, L.Dense(2)(L.Flatten()(y)))
    model.save(tmp_path / "m.keras")
    with pytest.raises(GraftError, match=r"unsupported Keras layers: ops\.Cumsum \(cumsum\), ops\.Sort \(sort\)"):
        graft.import_keras(tmp_path / "m.keras")


def test_a_tensor_constant_is_refused_not_dropped(tmp_path):
    x = keras.Input((4, 4, 3))
    y = L.Conv2D(2, 1)(x) + np.arange(2, dtype="float32")
    model = keras.Model(x, L.Dense(2)(L.Flatten()(y)))
    model.save(tmp_path / "m.keras")
    with pytest.raises(GraftError, match=r"ops\.Add with the argument"):
        graft.import_keras(tmp_path / "m.keras")


def test_gelu_is_exact_as_in_keras_3(tmp_path):
    x = keras.Input((4, 4, 3))
    y = L.Activation("gelu")(L.Conv2D(16, 1, activation="gelu")(x))
    model = keras.Model(x, L.Dense(4)(L.Flatten()(y)))
    randomise(model, seed=1, scale=3.0)
    model.save(tmp_path / "m.keras")
    bundle = graft.import_keras(tmp_path / "m.keras")
    x1, x2 = random_images(8, 4, 4, seed=1) * 2, random_images(8, 4, 4, seed=2) * 2
    # the tanh form differs by ~1e-3 on these logits: a tolerance of 1e-5 tells the two apart
    assert_parity(graft_out(bundle, x1), keras_out(model, x1), keras_out(model, x2), tolerance=1e-5)


def _layers_model():
    x = keras.Input((12, 10, 3))
    y = L.RandomFlip()(x)
    y = L.RandomRotation(0.1)(y)
    y = L.RandomZoom(0.1)(y)
    y = L.GaussianNoise(0.5)(y)
    y = L.Normalization(mean=[0.1, 0.2, 0.3], variance=[2.0, 0.5, 1.5])(y)
    y = L.Conv2D(6, 3, name="c")(y)
    y = L.GaussianDropout(0.3)(y)
    y = L.SpatialDropout2D(0.3)(y)
    y = L.Identity()(y)
    y = L.Cropping2D(((1, 2), (0, 1)))(y)
    y = L.PReLU()(y)
    y = L.UpSampling2D((2, 1), interpolation="bilinear")(y)
    y = L.UpSampling2D(2)(y)
    y = L.LayerNormalization(epsilon=1e-4)(y)
    y = L.ELU(alpha=0.7)(y)
    y = L.GlobalAveragePooling2D()(y)
    return keras.Model(x, L.Dense(4)(y))


@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_noops_and_new_layers_match_keras(fmt, tmp_path):
    model = _layers_model()
    randomise(model, seed=5)
    adapted = L.Normalization()  # an adapted layer keeps its statistics as weights, not in the config
    adapted.adapt(random_images(4, 12, 10, seed=9))
    nested = keras.Sequential([keras.Input((12, 10, 3)), adapted, model])
    nested.save(tmp_path / f"m.{fmt}")
    bundle = graft.import_keras(tmp_path / f"m.{fmt}")
    x1, x2 = random_images(2, 12, 10, seed=1), random_images(2, 12, 10, seed=2)
    assert_parity(graft_out(bundle, x1), keras_out(nested, x1), keras_out(nested, x2))


def test_unsupported_lists_are_complete_and_custom_names_agree(tmp_path):
    @keras.saving.register_keras_serializable(package="check")
    class Scale(L.Layer):
        def call(self, x):
            return x * 2

    x = keras.Input((4, 4, 3))
    y = Scale()(x)
    for _ in range(25):
        y = L.Conv2DTranspose(3, 1)(y)
    model = keras.Model(x, L.Dense(2)(L.Flatten()(y)))
    messages = []
    for fmt in ("keras", "h5"):
        model.save(tmp_path / f"m.{fmt}")
        with pytest.raises(GraftError) as error:
            graft.import_keras(tmp_path / f"m.{fmt}")
        messages.append(str(error.value).split("; supported")[0])
    assert messages[0] == messages[1]
    assert messages[0].count("Conv2DTranspose (") == 25 and "more" not in messages[0]
    assert "check>Scale (scale)" in messages[0]


def test_a_custom_layer_named_like_a_keras_layer_is_not_read_as_it(tmp_path):
    @keras.saving.register_keras_serializable(package="mine")
    class Add(L.Layer):
        def call(self, x):
            return x + 1.0

    x = keras.Input((4, 4, 3))
    model = keras.Model(x, L.Dense(2)(L.Flatten()(Add()(x))))
    for fmt in ("keras", "h5"):
        model.save(tmp_path / f"m.{fmt}")
        with pytest.raises(GraftError, match=r"unsupported Keras layers: mine>Add"):
            graft.import_keras(tmp_path / f"m.{fmt}")


@pytest.mark.parametrize("axis", [-1, 1])  # on (batch, classes), axis 1 is the class axis too
def test_a_final_ops_softmax_is_removed_like_a_softmax_layer(tmp_path, axis):
    x = keras.Input((6, 6, 3))
    logits = L.Dense(4, name="head")(L.Flatten()(L.Conv2D(2, 3)(x)))
    model = keras.Model(x, ops.softmax(logits, axis=axis))
    randomise(model, seed=4)
    model.save(tmp_path / "m.keras")
    bundle = graft.import_keras(tmp_path / "m.keras")
    assert any("softmax" in note for note in bundle.provenance.keras.notes)
    x1, x2 = random_images(3, 6, 6, seed=1), random_images(3, 6, 6, seed=2)
    head = keras.Model(model.input, model.get_layer("head").output)
    assert_parity(graft_out(bundle, x1), keras_out(head, x1), keras_out(head, x2))


def _more_operations_model():
    x = keras.Input((4, 6, 3))
    a = L.Conv2D(4, 1, name="a")(x)
    y = ops.concatenate([ops.sigmoid(a), ops.relu6(a * 4.0), ops.hard_sigmoid(a), ops.leaky_relu(a)], axis=-1)
    y = ops.elu(y) + ops.silu(y) - ops.tanh(y) + ops.exp(-ops.square(y)) + ops.sqrt(ops.abs(y)) + ops.power(y, 2.0)
    y = ops.negative(ops.relu(y)) / 3.0 + ops.softmax(y, axis=-1)
    y = ops.transpose(y, (0, 2, 1, 3))  # (N, 6, 4, 16)
    y = ops.squeeze(ops.expand_dims(ops.sum(y, axis=1), 1), 1) + ops.max(y, axis=1)  # (N, 4, 16)
    return keras.Model(x, L.Dense(3, name="head")(L.Flatten()(y)))


@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_more_operations_match_keras(fmt, tmp_path):
    model = _more_operations_model()
    randomise(model, seed=6)
    model.save(tmp_path / f"m.{fmt}")
    bundle = graft.import_keras(tmp_path / f"m.{fmt}")
    x1, x2 = random_images(2, 4, 6, seed=1), random_images(2, 4, 6, seed=2)
    assert_parity(graft_out(bundle, x1), keras_out(model, x1), keras_out(model, x2))
