"""Keras Applications → timm models: logits equal Keras's through each preprocessing mode; the real MobileNet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import graft
from graft.cli import main
from keras_helpers import (
    assert_parity,
    keras,
    keras_out,
    one_thread,  # noqa: F401  (autouse: one torch thread)
    randomise,
)

REAL_MOBILENET = Path(__file__).resolve().parents[2] / "shared" / "weights" / "mobilenet_v1_0.25_224.h5"
A = keras.applications

APPS = {
    # id: (constructor, preprocess_input, input size, expected timm name, preprocessing)
    "MobileNet_a025": (
        lambda s: A.MobileNet((s, s, 3), alpha=0.25, weights=None, classes=10, classifier_activation=None),
        A.mobilenet,
        64,
        "keras_mobilenetv1",
        "tf",
    ),
    "MobileNet_a1": (
        lambda s: A.MobileNet((s, s, 3), alpha=1.0, weights=None, classes=10, classifier_activation=None),
        A.mobilenet,
        64,
        "mobilenetv1_100",
        "tf",
    ),
    "MobileNetV2_a035": (
        lambda s: A.MobileNetV2((s, s, 3), alpha=0.35, weights=None, classes=10, classifier_activation=None),
        A.mobilenet_v2,
        96,
        "mobilenetv2_035",
        "tf",
    ),
    "MobileNetV2_a13_odd": (
        lambda s: A.MobileNetV2((s, s, 3), alpha=1.3, weights=None, classes=10, classifier_activation=None),
        A.mobilenet_v2,
        72,
        "keras_mobilenetv2",
        "tf",
    ),
    "ResNet50": (
        lambda s: A.ResNet50(weights=None, input_shape=(s, s, 3), classes=10, classifier_activation=None),
        A.resnet50,
        64,
        "keras_resnet50",
        "caffe",
    ),
    "DenseNet121": (
        lambda s: A.DenseNet121(weights=None, input_shape=(s, s, 3), classes=10, classifier_activation=None),
        A.densenet,
        64,
        "densenet121",
        "torch",
    ),
}


def _spec_logits(bundle, images: np.ndarray) -> np.ndarray:
    """Through the bundle's own input spec, as eval/predict/serve see it."""
    with torch.no_grad():
        return bundle.model.eval()(torch.cat([bundle.model_input(image) for image in images])).numpy()


def _two_batches(size: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return tuple(rng.integers(0, 256, (4, size, size, 3), dtype=np.uint8) for _ in range(2))


@pytest.mark.parametrize("app", list(APPS))
def test_application_parity(app, tmp_path):
    build, module, size, timm_name, mode = APPS[app]
    model = build(size)
    images, others = _two_batches(size)
    randomise(model, seed=1, calibration=module.preprocess_input(np.concatenate([images, others]).astype("float32")))
    model.save(tmp_path / "app.keras")
    bundle = graft.import_keras(tmp_path / "app.keras", tmp_path / "bundle")
    keras_info = bundle.provenance.keras
    assert (bundle.architecture.timm_name, keras_info.preprocess) == (timm_name, mode), keras_info.notes
    assert bundle.architecture.graph is None
    expected = keras_out(model, module.preprocess_input(images.astype("float32")))
    other = keras_out(model, module.preprocess_input(others.astype("float32")))
    error = assert_parity(_spec_logits(graft.load(tmp_path / "bundle"), images), expected, other)
    print(f"{app}: relative error {error:.2e} (logits up to {np.abs(expected).max():.3g})")


@pytest.mark.parametrize("generic", [False, True])
def test_application_logits_without_softmax_and_legacy_h5(generic, tmp_path):
    model = A.MobileNet((64, 64, 3), alpha=0.5, weights=None, classes=7, classifier_activation=None)
    images, others = _two_batches(64)
    randomise(model, seed=2, calibration=A.mobilenet.preprocess_input(images.astype("float32")))
    model.save(tmp_path / "m.h5")
    bundle = graft.import_keras(tmp_path / "m.h5", generic=generic)
    if generic:  # the layer graph, with the application's preprocessing all the same
        assert bundle.architecture.graph is not None and bundle.provenance.keras.preprocess == "tf"
    else:
        assert bundle.architecture.timm_name == "keras_mobilenetv1"
        assert bundle.architecture.timm_kwargs == {"channel_multiplier": 0.5, "pad_type": "same", "bn_eps": 0.001}
    expected = keras_out(model, A.mobilenet.preprocess_input(images.astype("float32")))
    other = keras_out(model, A.mobilenet.preprocess_input(others.astype("float32")))
    assert_parity(_spec_logits(bundle, images), expected, other)


def test_resnet50_with_another_preprocessing_keeps_the_timm_mapping(tmp_path):
    model = A.ResNet50(weights=None, input_shape=(32, 32, 3), classes=4, classifier_activation=None)
    images, others = _two_batches(32)
    scaled = images.astype("float32") / 127.5 - 1  # the user's own "tf" pipeline, RGB
    # BatchNorm statistics from 16 images: from 2, the 1×1 maps at the end have near-zero variance that
    # amplifies float32 rounding without bound
    randomise(model, seed=3, calibration=np.random.default_rng(5).uniform(-1, 1, (16, 32, 32, 3)).astype("float32"))
    model.save(tmp_path / "m.keras")
    bundle = graft.import_keras(tmp_path / "m.keras", preprocess="tf")
    assert bundle.architecture.timm_name == "keras_resnet50", bundle.provenance.keras.notes
    expected, other = keras_out(model, scaled), keras_out(model, others.astype("float32") / 127.5 - 1)
    assert_parity(_spec_logits(bundle, images), expected, other)


def test_modified_application_falls_back_to_the_layer_graph(tmp_path):
    base = A.MobileNet((32, 32, 3), alpha=0.25, weights=None, include_top=False)
    x = keras.layers.GlobalAveragePooling2D()(base.output)
    model = keras.Model(base.input, keras.layers.Dense(3)(keras.layers.Dense(8, activation="relu")(x)))
    randomise(model)
    model.save(tmp_path / "m.keras")
    bundle = graft.import_keras(tmp_path / "m.keras")
    assert bundle.architecture.graph is not None
    images = np.random.default_rng(2).uniform(-1, 1, (2, 32, 32, 3)).astype("float32")
    with torch.no_grad():
        got = bundle.model(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
    assert_parity(got, keras_out(model, images), keras_out(model, images[:, ::-1].copy()))


def test_imported_application_trains_from_its_bundle(tmp_path):
    model = A.MobileNet((32, 32, 3), alpha=0.25, weights=None, classes=5)
    randomise(model)
    model.save(tmp_path / "m.keras")
    graft.import_keras(tmp_path / "m.keras", tmp_path / "imported")
    result = graft.train(
        data="digits",
        weights=str(tmp_path / "imported"),
        input_mode="fold",
        size=32,
        epochs=1,
        batch_size=32,
        max_train=64,
        run_dir=str(tmp_path / "run"),
        output=str(tmp_path / "trained"),
        workers=0,
        threads=1,
    )
    arch = result.bundle.architecture
    assert (arch.timm_name, arch.timm_kwargs["channel_multiplier"], arch.num_classes) == ("keras_mobilenetv1", 0.25, 10)
    transfer = result.bundle.provenance.transfer
    assert len(transfer.loaded) > 50 and all("classifier" in k["name"] for k in transfer.skipped)
    assert result.bundle.spec.backbone_mean == (0.5, 0.5, 0.5)  # the tf preprocessing the weights expect


def _real_images() -> np.ndarray:
    """A dozen real 224×224 photos: crops of scikit-learn's two sample photographs (a temple and a flower)."""
    from sklearn.datasets import load_sample_images

    crops = []
    for photo in load_sample_images().images:
        for top, left, side in [
            (0, 0, 427),
            (0, 213, 427),
            (0, 100, 300),
            (100, 300, 300),
            (50, 50, 224),
            (200, 0, 227),
        ]:
            crop = torch.from_numpy(np.ascontiguousarray(photo[top : top + side, left : left + side])).permute(2, 0, 1)
            resized = torch.nn.functional.interpolate(
                crop[None].float(), size=(224, 224), mode="bilinear", antialias=True
            )
            crops.append(resized.round().clamp(0, 255).byte()[0].permute(1, 2, 0).numpy())
    return np.stack(crops)


def test_real_imagenet_mobilenet_top1_matches_keras(tmp_path):
    if not REAL_MOBILENET.is_file():
        pytest.skip(f"the verified ImageNet MobileNet is not at {REAL_MOBILENET}")
    bundle = graft.import_keras(REAL_MOBILENET, tmp_path / "mobilenet")
    assert bundle.classes[:3] == ["tench", "goldfish", "great white shark"] and len(bundle.classes) == 1000
    # Keras 3 cannot deserialise this Keras 2.8 file's config (DepthwiseConv2D 'groups'), so Keras builds the same
    # application and loads the file's weights: Keras's own computation on the real weights.
    reference = A.MobileNet((224, 224, 3), alpha=0.25, weights=None, classifier_activation=None)
    reference.load_weights(REAL_MOBILENET)
    images = _real_images()
    expected = keras_out(reference, A.mobilenet.preprocess_input(images.astype("float32")))
    loaded = graft.load(tmp_path / "mobilenet")
    got = _spec_logits(loaded, images)
    diff = np.abs(got - expected).max()
    agree = int((got.argmax(1) == expected.argmax(1)).sum())
    print(
        f"real MobileNet: top-1 agrees on {agree}/{len(images)} photos, max |Δ logit| {diff:.2e} "
        f"(logits up to {np.abs(expected).max():.3g})"
    )
    assert_parity(got, expected, np.roll(expected, 1, axis=0))  # other: Keras's logits of the other photos
    assert agree == len(images)
    predictions = loaded.predict(list(images), top_k=1)
    assert [p.classes[0] for p in predictions] == [loaded.classes[i] for i in expected.argmax(1)]


def test_cli_import_keras(tmp_path, capsys):
    model = keras.Sequential(
        [keras.Input((8, 8, 1)), keras.layers.Conv2D(2, 3), keras.layers.Flatten(), keras.layers.Dense(3)]
    )
    model.save(tmp_path / "s.keras")
    with pytest.raises(SystemExit) as done:
        main(["import-keras", str(tmp_path / "s.keras"), "-o", str(tmp_path / "b"), "--classes", "x,y,z"])
    assert done.value.code == 0
    assert "layer graph" in capsys.readouterr().out
    assert graft.load(tmp_path / "b").classes == ["x", "y", "z"]
    with pytest.raises(SystemExit):
        main(["info", str(tmp_path / "b")])
    assert "imported    " in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:
        main(["import-keras", str(tmp_path / "s.keras"), "-o", str(tmp_path / "b")])
    assert done.value.code == 2
    assert "already exists" in capsys.readouterr().err
    (tmp_path / "junk.h5").write_bytes(b"\x00" * 100)
    with pytest.raises(SystemExit) as done:
        main(["import-keras", str(tmp_path / "junk.h5"), "-o", str(tmp_path / "c")])
    assert done.value.code == 2
    assert not (tmp_path / "c").exists()


def test_mobilenet_at_a_size_timm_pads_differently_keeps_the_layer_graph(tmp_path):
    # 72 → 36 → 18 → 9: Keras pads the stride-2 depthwise conv on 9×9 by (0, 1), TF "same" by (1, 1).
    model = A.MobileNet((72, 72, 3), alpha=0.25, weights=None, classes=3, classifier_activation=None)
    images, others = _two_batches(72)
    randomise(model, seed=4, calibration=A.mobilenet.preprocess_input(images.astype("float32")))
    model.save(tmp_path / "m.keras")
    bundle = graft.import_keras(tmp_path / "m.keras")
    assert bundle.architecture.graph is not None
    assert any("kept the layer graph" in note for note in bundle.provenance.keras.notes)
    expected = keras_out(model, A.mobilenet.preprocess_input(images.astype("float32")))
    other = keras_out(model, A.mobilenet.preprocess_input(others.astype("float32")))
    assert_parity(_spec_logits(bundle, images), expected, other)
