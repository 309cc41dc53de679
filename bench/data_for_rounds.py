"""How fast `graft data clutter` and `graft data frames` are, and whether the clutter levels behave as meant.

1. clutter: the MNIST benchmark (6 levels, every image at exactly one level: 70 000 PNGs), wall time.
2. frames: a synthetic 1080p h264 video (encoded here first, not timed), extracted at 224 px and at full size.
3. with --train: a ResNet-18 trained for one epoch on level 1 and one on level 6 (`--max-train` images each),
   each evaluated on every level's test split: the matrix `graft rounds` will fill in, in miniature.

    uv run python bench/data_for_rounds.py                 # 1 and 2
    uv run python bench/data_for_rounds.py --train         # also 3 (a few minutes on 2 cores)

Needs MNIST under $GRAFT_DATA/mnist (or ../shared/datasets/mnist beside the repository). Rows are written to
bench/results/data_for_rounds.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def data_root(explicit: str | None) -> str:
    return explicit or os.environ.get("GRAFT_DATA") or str(REPO.parent / "shared" / "datasets")


def bench_clutter(root: str, out: Path, max_train: int | None) -> dict:
    from graft.data import make_clutter

    result = make_clutter("mnist", out, data_root=root, max_train=max_train, download=False)
    images = sum(c["train"] + c["test"] for c in result.counts)
    return {"what": "clutter mnist, 6 levels", "images": images, "seconds": round(result.seconds, 1)}


def encode_video(path: Path, seconds: int, width: int, height: int, rate: int = 30) -> Path:
    """A moving gradient with noise, h264 at yuv420p: roughly what a phone clip costs to decode."""
    import av

    rng = np.random.default_rng(0)
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None, None]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("h264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast"}
        stream.set_display_rotation(-90)  # a portrait phone video
        for i in range(seconds * rate):
            pixels = (x + y * 0.5 + i * 4 + np.zeros((1, 1, 3), np.float32)) % 256
            pixels[::8, ::8] = rng.integers(0, 255, pixels[::8, ::8].shape)
            frame = av.VideoFrame.from_ndarray(pixels.astype(np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def bench_frames(tmp: Path) -> list[dict]:
    from graft.data import extract_frames

    video = encode_video(tmp / "clip.mp4", seconds=10, width=1920, height=1080)
    rows = []
    for options in ({"size": 224}, {"size": 224, "crop": "center", "every": 10}, {}):
        out = tmp / f"frames-{len(rows)}"
        started = time.perf_counter()
        result = extract_frames(video, label="thing", out=out, **options)
        seconds = time.perf_counter() - started
        decoded = result.written + result.skipped
        rows.append(
            {
                "what": f"frames 1080p h264, {options or 'full size'}",
                "decoded": decoded,
                "written": result.written,
                "seconds": round(seconds, 2),
                "decoded_per_s": round(decoded / seconds, 1),
            }
        )
    return rows


def bench_training(root: Path, max_train: int) -> list[dict]:
    import graft

    rows = []
    for level in (1, 6):
        trained = graft.train(
            data=f"folder:{root / f'level-{level}'}",
            model="resnet18",
            size=32,
            epochs=1,
            max_train=max_train,
            run_dir=str(root.parent / f"run-{level}"),
            workers=2,
        )
        bundle = graft.load(trained.bundle.path)
        accuracy = {
            f"level-{k}": round(graft.evaluate(bundle, f"folder:{root / f'level-{k}'}").accuracy, 4)
            for k in range(1, 7)
        }
        rows.append({"what": f"resnet18 1 epoch on level {level} ({max_train} images)", "test_accuracy": accuracy})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root")
    parser.add_argument("--max-train", type=int, default=None, help="clutter: training images per level")
    parser.add_argument("--train", action="store_true", help="also train on level 1 and level 6")
    parser.add_argument("--train-images", type=int, default=5000)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        rows.append(bench_clutter(data_root(args.data_root), tmp / "clutter", args.max_train))
        print(json.dumps(rows[-1]), flush=True)
        for row in bench_frames(tmp):
            rows.append(row)
            print(json.dumps(row), flush=True)
        if args.train:
            for row in bench_training(tmp / "clutter", args.train_images):
                rows.append(row)
                print(json.dumps(row), flush=True)
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "rows": rows}
    target = REPO / "bench" / "results" / "data_for_rounds.json"
    from graft.io import atomic_write_json

    atomic_write_json(target, result)
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
