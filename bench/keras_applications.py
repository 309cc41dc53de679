"""Keras Applications → graft: does each import and match Keras, from .keras and legacy .h5? (issue 15)

Every application is built by Keras 3 (torch backend, no TensorFlow) with random weights whose BatchNorm
statistics are measured on a batch (so the logits depend on the input: random statistics alone saturate deep
nets into constant outputs), saved in both formats, imported with `graft.import_keras`, and compared with Keras
on 4 other inputs: relative error = max |Δ logit| / max(1, max |logit|), and the input sensitivity of the reference
(the same ratio between two input batches) that makes the comparison meaningful. A refused import records its
reason. Writes bench/results/keras_applications.json and prints a markdown table.

    KERAS_BACKEND=torch uv run python bench/keras_applications.py            # all 15, ~10 min on 2 cores
    KERAS_BACKEND=torch uv run python bench/keras_applications.py MobileNet VGG16

Input sizes are small (the applications' minimum or a little above) to keep the run short; the layers and
padding rules are the same at 224.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import numpy as np
import torch

import graft
from keras_helpers import graft_out, keras, keras_out, randomise

A = keras.applications
TOLERANCE = 1e-4
RESULTS = Path(__file__).resolve().parent / "results" / "keras_applications.json"

# name: (constructor at a size, its preprocess_input module, input size)
APPS = {
    "MobileNet": (lambda s: A.MobileNet((s, s, 3), weights=None), A.mobilenet, 128),
    "MobileNetV2": (lambda s: A.MobileNetV2((s, s, 3), weights=None), A.mobilenet_v2, 96),
    "MobileNetV3Small": (lambda s: A.MobileNetV3Small((s, s, 3), weights=None), A.mobilenet_v3, 96),
    "MobileNetV3Large": (lambda s: A.MobileNetV3Large((s, s, 3), weights=None), A.mobilenet_v3, 96),
    "ResNet50": (lambda s: A.ResNet50(weights=None, input_shape=(s, s, 3)), A.resnet50, 64),
    "ResNet50V2": (lambda s: A.ResNet50V2(weights=None, input_shape=(s, s, 3)), A.resnet_v2, 64),
    "ResNet101": (lambda s: A.ResNet101(weights=None, input_shape=(s, s, 3)), A.resnet, 64),
    "DenseNet121": (lambda s: A.DenseNet121(weights=None, input_shape=(s, s, 3)), A.densenet, 64),
    "EfficientNetB0": (lambda s: A.EfficientNetB0(weights=None, input_shape=(s, s, 3)), A.efficientnet, 64),
    "EfficientNetV2B0": (lambda s: A.EfficientNetV2B0(weights=None, input_shape=(s, s, 3)), A.efficientnet_v2, 64),
    "VGG16": (lambda s: A.VGG16(weights=None, input_shape=(s, s, 3)), A.vgg16, 64),
    "Xception": (lambda s: A.Xception(weights=None, input_shape=(s, s, 3)), A.xception, 96),
    "InceptionV3": (lambda s: A.InceptionV3(weights=None, input_shape=(s, s, 3)), A.inception_v3, 96),
    "ConvNeXtTiny": (lambda s: A.ConvNeXtTiny(weights=None, input_shape=(s, s, 3)), A.convnext, 64),
}


def run(name: str, work: Path) -> dict:
    build, module, size = APPS[name]
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (24, size, size, 3)).astype("float32")
    prepared = np.ascontiguousarray(module.preprocess_input(pixels.copy()))  # caffe flips RGB with a view
    keras.utils.set_random_seed(0)
    model = build(size)
    randomise(model, seed=1, calibration=prepared[:16])
    x, other = prepared[16:20], prepared[20:24]
    expected, reference_other = keras_out(model, x), keras_out(model, other)
    softmax = np.allclose(expected.sum(1), 1, atol=1e-3)  # graft returns logits: compare log-probabilities
    row = {"application": name, "size": size, "keras": keras.__version__, "formats": {}}
    for fmt in ("keras", "h5"):
        path = work / f"{name}.{fmt}"
        model.save(path)
        started = time.perf_counter()
        try:
            bundle = graft.import_keras(path)
        except graft.GraftError as error:
            row["formats"][fmt] = {"status": "refused", "reason": str(error)[:300]}
            continue
        keras_info = bundle.provenance.keras
        # the reference takes the preprocessed input; a caffe bundle takes it in RGB (graft swaps to BGR inside)
        got = graft_out(bundle, np.ascontiguousarray(x[..., ::-1]) if keras_info.preprocess == "caffe" else x)
        exp, oth = expected, reference_other
        if softmax:
            got = torch.log_softmax(torch.from_numpy(got), 1).numpy()
            exp, oth = np.log(np.maximum(expected, 1e-30)), np.log(np.maximum(reference_other, 1e-30))
        scale = max(1.0, float(np.abs(exp).max()))
        error = float(np.abs(got - exp).max()) / scale
        spread = float(np.abs(exp - oth).max()) / scale
        row["formats"][fmt] = {
            "status": "ok" if error <= TOLERANCE and spread > 100 * TOLERANCE else "MISMATCH",
            "imported_as": bundle.architecture.timm_name,
            "application": keras_info.application,
            "preprocess": keras_info.preprocess,
            "relative_error": error,
            "input_sensitivity": spread,
            "seconds": round(time.perf_counter() - started, 1),
        }
    return row


def table(rows: list[dict]) -> str:
    lines = [
        "| application | size | .keras | legacy .h5 | imported as | default preprocessing | rel. error (.keras / .h5) "
        "| input sensitivity |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        k, h = row["formats"].get("keras", {}), row["formats"].get("h5", {})
        what = k.get("imported_as") or h.get("imported_as") or "—"
        what = "layer graph" if what == "keras-graph" else f"timm `{what}`"
        errors = " / ".join(f"{f['relative_error']:.1e}" if "relative_error" in f else "—" for f in (k, h))
        reasons = [f.get("reason") for f in (k, h) if f.get("reason")]
        lines.append(
            f"| {row['application']} | {row['size']} | {k.get('status', '—')} | {h.get('status', '—')} | {what} | "
            f"{k.get('preprocess', '—')} | "
            f"{errors} | {k.get('input_sensitivity', float('nan')):.1e} |" + (f" {reasons[0]}" if reasons else "")
        )
    return "\n".join(lines)


def main() -> None:
    names = sys.argv[1:] or list(APPS)
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for name in names:
            started = time.perf_counter()
            rows.append(run(name, Path(work)))
            print(f"{name}: {json.dumps(rows[-1]['formats'])} ({time.perf_counter() - started:.0f} s)", flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    if RESULTS.is_file() and sys.argv[1:]:  # a partial run replaces its rows, keeping the others in order
        kept = {row["application"]: row for row in json.loads(RESULTS.read_text())["rows"]}
        kept.update({row["application"]: row for row in rows})
        rows = [kept[name] for name in APPS if name in kept]
    RESULTS.write_text(json.dumps({"tolerance": TOLERANCE, "rows": rows}, indent=1))
    print(table(rows))


if __name__ == "__main__":
    main()
