"""Shared helpers for the Keras import tests: Keras 3 on the torch backend, random weights, logits both ways."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")  # before keras is imported anywhere: no TensorFlow

import numpy as np
import pytest
import torch

keras = pytest.importorskip("keras", reason="keras>=3 (dev dependency) is needed for the Keras parity tests")

if keras.backend.backend() != "torch":
    pytest.skip("the Keras parity tests need KERAS_BACKEND=torch", allow_module_level=True)

TOLERANCE = 1e-4


def leaf_layers(model) -> list:
    """Every layer with weights of its own, inside nested models too."""
    return [layer for layer in model._flatten_layers(include_self=False, recursive=True) if not layer._layers]


def randomise(model, seed: int = 0, scale: float = 1.0, calibration: np.ndarray | None = None) -> None:
    """Random weights everywhere, then BatchNormalization statistics measured on a batch (`calibration`, else
    uniform in [-1, 1]): random statistics alone saturate deep nets into constant outputs (MobileNet's logits were
    the same for every input), which makes a parity test unable to fail."""
    rng = np.random.default_rng(seed)
    norms = []
    for layer in leaf_layers(model):
        weights = layer.get_weights()
        if not weights:
            continue
        if isinstance(layer, keras.layers.BatchNormalization):
            norms.append(layer)
            names = [v.path.rsplit("/", 1)[-1] for v in layer.weights]
            new = []
            for name, w in zip(names, weights, strict=True):
                if name in ("gamma", "moving_variance"):
                    new.append(rng.uniform(0.5, 1.5, w.shape).astype("float32"))
                else:
                    new.append(rng.normal(0, 0.2, w.shape).astype("float32"))
            layer.set_weights(new)
        elif isinstance(layer, keras.layers.Normalization):
            continue  # its statistics are data, not weights to randomise
        else:
            new = []
            for variable, w in zip(layer.weights, weights, strict=True):
                if variable.path.endswith("gamma"):  # LayerNormalization, LayerScale: scales around 1
                    new.append(rng.uniform(0.5, 1.5, w.shape))
                elif w.ndim <= 1:  # biases
                    new.append(rng.normal(0, 0.1, w.shape))
                else:
                    fan_in = int(np.prod(w.shape[:-1])) or 1
                    new.append(rng.normal(0, 1, w.shape) * scale / np.sqrt(fan_in))
            layer.set_weights([n.astype("float32") for n in new])
    if norms:
        shape = tuple(model.inputs[0].shape[1:])
        batch = calibration if calibration is not None else rng.uniform(-1, 1, (8, *shape)).astype("float32")
        momenta = [layer.momentum for layer in norms]
        for layer in norms:
            layer.momentum = 0.0
        model(batch, training=True)
        for layer, momentum in zip(norms, momenta, strict=True):
            layer.momentum = momentum


def assert_parity(got: np.ndarray, expected: np.ndarray, other: np.ndarray, tolerance: float = TOLERANCE) -> float:
    """`got` equals the reference `expected` within `tolerance` relative to the logits' scale — after checking
    that the reference depends on its input (`other`: its output on other inputs differs by far more than the
    tolerance), so that the comparison could fail. Returns the relative error."""
    scale = max(1.0, float(np.abs(expected).max()))
    spread = float(np.abs(expected - other).max()) / scale
    assert spread > 100 * tolerance, f"the reference barely depends on its input (Δ {spread:.1e}): a void check"
    error = float(np.abs(got - expected).max()) / scale
    assert error <= tolerance, f"relative error {error:.2e} > {tolerance:g}"
    return error


def keras_out(model, x_nhwc: np.ndarray) -> np.ndarray:
    out = model(x_nhwc, training=False)
    return out.detach().cpu().numpy() if hasattr(out, "detach") else np.asarray(out)


def graft_out(bundle, x_nhwc: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return bundle.model.eval()(torch.from_numpy(x_nhwc).permute(0, 3, 1, 2).contiguous()).numpy()


def random_images(n: int, height: int, width: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, height, width, channels)).astype("float32")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread for these small models: on a shared 2-core machine, 2 threads under load run ~10× slower
    (measured: importing a DenseNet169 took 11.6 s with 2 threads and 0.75 s with 1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
