"""A served rounds project to train from the phone: round 1 on two digits, and photos of new things to teach it."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

import graft.rounds as rounds
from rounds_helpers import digit_folder

NEW_CLASSES = ("bright", "stripes")  # things round 1 never saw, each trivially told apart from digits and each other


def teach_image(kind: str, seed: int, size: int = 32) -> np.ndarray:
    """A small grey photo of one of `NEW_CLASSES` (or a digit-like dark one): different pixels for every seed."""
    rng = np.random.default_rng(seed)
    if kind == "bright":
        return np.clip(215 + rng.normal(0, 12, (size, size)), 0, 255).astype(np.uint8)
    if kind == "stripes":
        phase = int(rng.integers(0, 6))
        rows = (np.arange(size) + phase) // 3 % 2 == 0
        image = np.where(rows[:, None], 235, 15).repeat(size, axis=1).astype(float)
        return np.clip(image + rng.normal(0, 10, (size, size)), 0, 255).astype(np.uint8)
    raise ValueError(kind)


def save_png(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def served_project(root: Path, *, epochs: int = 4) -> Path:
    """A rounds project whose round 1 (digits 0 and 1, two quick epochs) is trained and promoted; later rounds
    train for `epochs` epochs. The gate lets any round better than chance through: these tests are about the
    loop, and test_rounds.py covers the gate."""
    project = root / "proj"
    rounds.init(
        project,
        model="resnet10t",
        input_mode="fold",
        size=16,
        epochs=epochs,
        batch_size=16,
        lr=3e-3,
        precision="fp32",
        group_by="none",
        max_forgetting=1.0,
        max_accuracy_drop=1.0,
    )
    data = digit_folder(root / "digits", ["0", "1"], per_class=16)
    rounds.add(project, "digits", data, settings={"epochs": 2})
    rounds.train(project, workers=0)
    return project


def wait_for(url: str, headers: dict, states: tuple[str, ...], seconds: float = 120) -> dict:
    """Poll GET /v1/training until its state is one of `states`; the last answer."""
    deadline = time.monotonic() + seconds
    answer: dict = {}
    while time.monotonic() < deadline:
        answer = httpx.get(f"{url}/v1/training", headers=headers).json()
        if answer.get("state") in states:
            return answer
        time.sleep(0.05)
    raise AssertionError(f"training never reached {states}: {answer}")
