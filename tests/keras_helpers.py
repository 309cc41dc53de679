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


def randomise(model, seed: int = 0, scale: float = 1.0) -> None:
    """Random weights everywhere, including BatchNorm statistics and biases that Keras initialises to 0/1."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        if isinstance(layer, keras.layers.BatchNormalization):
            names = [v.path.rsplit("/", 1)[-1] for v in layer.weights]
            new = []
            for name, w in zip(names, weights, strict=True):
                if name in ("gamma", "moving_variance"):
                    new.append(rng.uniform(0.5, 1.5, w.shape).astype("float32"))
                else:
                    new.append(rng.normal(0, 0.2, w.shape).astype("float32"))
            layer.set_weights(new)
        else:
            new = []
            for w in weights:
                if w.ndim == 1:  # biases
                    new.append(rng.normal(0, 0.1, w.shape).astype("float32"))
                else:
                    fan_in = int(np.prod(w.shape[:-1])) or 1
                    new.append((rng.normal(0, 1, w.shape) * scale / np.sqrt(fan_in)).astype("float32"))
            layer.set_weights(new)


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
