"""Issue 16 target 3: the reference experiment's own model trained by the reference Keras pipeline and by graft,
side by side in one run on the same machine. Training images/s of each and graft's ratio to Keras.

The model: DenseNet121 (random weights: the weights do not change the speed) at 64×64×3 with a Flatten + Dense(10)
head, batch 64, Adam at 1e-4, MNIST with rotation ±10°, zoom ±10 % and shift ±10 % augmentation.

- `keras`: the reference pipeline as it was written: Keras 3 on TensorFlow (2.21 from PyPI, in its own
  environment: never in graft's lock), every 28×28 digit resized on its own with `cv2.resize` to 64×64, copied to
  three channels, a float32 array (÷255) built before training; `ImageDataGenerator(rotation_range=10,
  zoom_range=0.1, width_shift_range=0.1, height_shift_range=0.1).flow(...)` into `model.fit`.
- `graft …`: `graft.train(recipe="recipes/reference-densenet121-replicate.toml")`, the run `graft train` makes of
  that recipe (same model, head, batch, optimizer and augmentation; uint8 images resized per batch, augmentation
  per image with torchvision), with `pretrained` off (no network here) and the precision and layout of each
  setting. graft's epoch timer includes its data path (resize, augmentation, normalisation); Keras's fit
  includes its augmentation but not the cv2 resize, which the reference does once before training (its cost per
  image is reported separately as `prep_ms_per_image`).

Each setting runs in its own process (fresh imports, its own threads), the settings take turns in every round
(the order rotates from round to round) so that a neighbour's load falls on all alike. Each process trains one
untimed warm-up pass (Keras: one step; graft: its first epoch) and then `--steps` timed steps; the figure is
images per wall second of those steps (and per CPU second of the process, the honest figure on a shared machine).

    uv run python bench/densenet_side_by_side.py   # 10 processes; estimated 5–8 min on a quiet 2-core machine
    uv run python bench/densenet_side_by_side.py --rounds 3 --steps 6 --keras-python /path/to/tfenv/bin/python

The Keras environment (outside the repository):
    uv venv /work/tfenv --python 3.11
    VIRTUAL_ENV=/work/tfenv uv pip install "tensorflow==2.21.*" opencv-python-headless scipy
(scipy: ImageDataGenerator's affine transforms.) Needs MNIST under $GRAFT_DATA/mnist.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "densenet_side_by_side.json"
RECIPE = REPO / "recipes" / "reference-densenet121-replicate.toml"
BATCH = 64
SIZE = 64

# setting: (runner, graft overrides)
SETTINGS: dict[str, tuple[str, dict]] = {
    "keras reference": ("keras", {}),
    "graft fp32": ("graft", {"precision": "fp32"}),
    "graft fp32 channels-last": ("graft", {"precision": "fp32", "channels_last": True}),
    "graft bf16": ("graft", {"precision": "bf16"}),
    "graft bf16 channels-last": ("graft", {"precision": "bf16", "channels_last": True}),
    # torch.compile (inductor): compiled during the untimed first epoch; the timed one runs the compiled code.
    "graft bf16 channels-last compiled": ("graft", {"precision": "bf16", "channels_last": True, "compile": True}),
}


def _data_root() -> Path:
    return Path(os.environ.get("GRAFT_DATA", REPO.parent / "shared" / "datasets"))


def _mnist(n: int) -> tuple:
    """The first n training digits and labels, read from the IDX files as the reference's loader gives them."""
    import numpy as np

    folder = _data_root() / "mnist"
    with gzip.open(folder / "train-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)[:n]
    with gzip.open(folder / "train-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)[:n]
    return images, labels.astype("int64")


def keras_child(args: argparse.Namespace) -> dict:
    import cv2
    import numpy as np
    import tensorflow as tf

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    import keras
    from keras.src.legacy.preprocessing.image import ImageDataGenerator  # Keras 3 keeps it here, unexported

    keras.utils.set_random_seed(0)
    digits, labels = _mnist(BATCH * args.steps)
    started = time.perf_counter()
    # The reference's preprocessing: one cv2.resize per image, gray copied to RGB, float32 in [0, 1].
    x = np.stack([cv2.cvtColor(cv2.resize(d, (SIZE, SIZE)), cv2.COLOR_GRAY2RGB) for d in digits]).astype(np.float32)
    x /= 255.0
    prep_s = time.perf_counter() - started
    base = keras.applications.DenseNet121(weights=None, include_top=False, input_shape=(SIZE, SIZE, 3))
    out = keras.layers.Dense(10, activation="softmax")(keras.layers.Flatten()(base.output))
    model = keras.Model(base.input, out)
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    flow = ImageDataGenerator(rotation_range=10, zoom_range=0.1, width_shift_range=0.1, height_shift_range=0.1).flow(
        x, labels, batch_size=BATCH, seed=0
    )

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.wall, self.cpu = time.perf_counter(), time.process_time()

        def on_epoch_end(self, epoch, logs=None):
            self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu

    model.fit(flow, steps_per_epoch=1, epochs=1, verbose=0)  # warm-up: graph tracing, oneDNN primitives
    clock = Clock()
    model.fit(flow, steps_per_epoch=args.steps, epochs=1, verbose=0, callbacks=[clock])
    return {
        "images": BATCH * args.steps,
        "wall_s": clock.wall,
        "cpu_s": clock.cpu,
        "prep_ms_per_image": 1000 * prep_s / len(digits),
        "versions": f"tensorflow {tf.__version__}, keras {keras.__version__}, opencv {cv2.__version__}",
    }


def graft_child(args: argparse.Namespace, overrides: dict) -> dict:
    import torch

    import graft
    from graft.training.config import recipe_settings, validate

    settings = recipe_settings(
        RECIPE,
        data_root=str(_data_root()),
        download=False,
        epochs=2,  # the first is the warm-up
        max_train=BATCH * args.steps,
        max_valid=8,
        max_test=8,
        threads=args.threads or None,
        **overrides,
    )
    settings.pop("pretrained")  # random weights: no network here, and the weights do not change the speed
    marks: list[tuple[float, float]] = []

    def on_epoch(record, model, spec) -> None:  # graft's epoch callback: (metrics, model, input spec)
        marks.append((time.perf_counter(), time.process_time()))

    with tempfile.TemporaryDirectory() as tmp:
        started = (time.perf_counter(), time.process_time())
        config = validate({**settings, "run_dir": f"{tmp}/run", "output": f"{tmp}/bundle"}, origin=str(RECIPE))
        result = graft.train(config, on_epoch=on_epoch)
    timed = result.history[-1]
    return {
        "images": BATCH * args.steps,
        "wall_s": timed["seconds"],
        # CPU of the second epoch, from the callback after epoch 1 to the one after epoch 2: includes its
        # validation on 8 images (about 1 % of the work of 64 × steps training images).
        "cpu_s": marks[1][1] - marks[0][1],
        "images_per_s_graft": timed["images_per_s"],
        "runtime": f"torch {torch.__version__}, {overrides}",
        "startup_s": marks[0][0] - started[0],
    }


def run_child(name: str, args: argparse.Namespace) -> dict:
    runner, _ = SETTINGS[name]
    python = args.keras_python if runner == "keras" else sys.executable
    command = [python, __file__, "--child", name, "--steps", str(args.steps), "--threads", str(args.threads)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "GRAFT_DATA": str(_data_root())}
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{name} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    row = json.loads(lines[-1][len("RESULT ") :])
    row["process_s"] = time.perf_counter() - started
    row["img_per_s"] = row["images"] / row["wall_s"]
    row["img_per_cpu_s"] = row["images"] / row["cpu_s"]
    return row


def summarise(runs: dict[str, list[dict]]) -> list[dict]:
    """Median over rounds per setting, and each setting's ratio to Keras within the same round (median)."""
    keras_runs = runs.get("keras reference", [])
    rows = []
    for name, results in runs.items():
        ratios = [r["img_per_s"] / k["img_per_s"] for r, k in zip(results, keras_runs, strict=False)]
        cpu_ratios = [r["img_per_cpu_s"] / k["img_per_cpu_s"] for r, k in zip(results, keras_runs, strict=False)]
        rows.append(
            {
                "setting": name,
                "img_per_s": statistics.median(r["img_per_s"] for r in results),
                "img_per_cpu_s": statistics.median(r["img_per_cpu_s"] for r in results),
                "vs_keras": statistics.median(ratios) if ratios else None,
                "vs_keras_cpu": statistics.median(cpu_ratios) if cpu_ratios else None,
                "rounds": [round(r["img_per_s"], 2) for r in results],
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4, help="timed training steps of 64 images per setting")
    parser.add_argument("--threads", type=int, default=0, help="threads for both (0: each framework's default)")
    parser.add_argument("--only", nargs="*", choices=list(SETTINGS), help="a subset of the settings")
    parser.add_argument(
        "--keras-python",
        default=os.environ.get("KERAS_PYTHON", "/work/tfenv/bin/python"),
        help="the Python of the TensorFlow environment",
    )
    parser.add_argument("--json", type=Path, default=RESULTS)
    parser.add_argument("--child", choices=list(SETTINGS), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        runner, overrides = SETTINGS[args.child]
        result = keras_child(args) if runner == "keras" else graft_child(args, {**overrides})
        print("RESULT " + json.dumps(result), flush=True)
        return

    names = args.only or list(SETTINGS)
    runs: dict[str, list[dict]] = {name: [] for name in names}
    started = time.perf_counter()
    for round_ in range(args.rounds):
        order = names[round_ % len(names) :] + names[: round_ % len(names)]
        for name in order:
            row = run_child(name, args)
            runs[name].append(row)
            print(
                f"round {round_ + 1} {name:<26} {row['img_per_s']:6.1f} img/s  {row['img_per_cpu_s']:6.1f} img/CPU-s"
                f"  ({row['process_s']:.0f} s process)",
                flush=True,
            )
        write_report(args, runs, started, rounds_done=round_ + 1)  # a run cut short keeps its finished rounds
    rows = summarise(runs)
    print(
        f"\n{args.rounds} rounds × {args.steps} steps of {BATCH}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}"
    )
    print(f"{'setting':<26} {'img/s':>7} {'img/CPU-s':>10} {'× keras':>8} {'× keras CPU':>12}")
    for row in rows:
        ratio = f"{row['vs_keras']:8.2f}" if row["vs_keras"] else f"{'—':>8}"
        cpu_ratio = f"{row['vs_keras_cpu']:12.2f}" if row["vs_keras_cpu"] else f"{'—':>12}"
        print(f"{row['setting']:<26} {row['img_per_s']:7.1f} {row['img_per_cpu_s']:10.1f} {ratio} {cpu_ratio}")


def write_report(args: argparse.Namespace, runs: dict[str, list[dict]], started: float, rounds_done: int) -> None:
    report = {
        "rounds": rounds_done,
        "steps": args.steps,
        "batch": BATCH,
        "threads": args.threads or "default",
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "seconds": time.perf_counter() - started,
        "rows": summarise(runs),
        "runs": runs,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.json.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(args.json)  # never a half-written result


if __name__ == "__main__":
    main()
