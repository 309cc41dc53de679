"""The second user story, end to end: grow a trained gray model instead of starting over.

1. Train a small CNN (resnet10t, `fold` mode) at 64×64×1 on scikit-learn's digits 0–7 (gray).
2. Surgery to 128×128×3 with one more block after `layer3` and two extra classes (8, 9, imprinted from their
   training images): every step prints its certificate.
3. Fine-tune the result for one epoch on colour digits 0–9 (each image a random foreground/background colour).
4. Compare with the same new architecture (the same surgery applied to an untrained model) trained from scratch
   for one epoch with the same settings (scratch gets the better of two learning rates). Repeated over seeds.

The colour digits are the gray ones painted with a random bright foreground colour on a random dark background: the
same objects seen by a colour camera. Recalibration and imprinting use the colour *training* images only.

    uv run python bench/surgery_story.py                 # 3 seeds, ~5 min on 2 cores
    uv run python bench/surgery_story.py --seeds 1 --json bench/results/surgery_story.json

Offline: the digits ship with scikit-learn.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def write_digit_folders(root: Path, seed: int = 0) -> dict[str, Path]:
    """gray/{train,test}/<0..7> and colour/{train,test}/<0..9>, one seeded 80/20 split shared by both."""
    from graft.data.sources import load_everything
    from graft.data.split import stratified_split

    digits = load_everything("digits")
    train_idx, test_idx = stratified_split(digits.labels, 0.2, seed)
    rng = np.random.default_rng(seed)
    for split, positions in (("train", train_idx), ("test", test_idx)):
        for i in positions:
            label = int(digits.labels[i])
            gray = digits.image(int(i))[:, :, 0].astype(np.float32) / 255
            foreground, background = _colours(rng)
            colour = (gray[:, :, None] * foreground + (1 - gray[:, :, None]) * background).round().astype(np.uint8)
            if label < 8:
                path = root / "gray" / split / str(label)
                path.mkdir(parents=True, exist_ok=True)
                Image.fromarray(digits.image(int(i))[:, :, 0]).save(path / f"{i}.png")
            path = root / "colour" / split / str(label)
            path.mkdir(parents=True, exist_ok=True)
            Image.fromarray(colour).save(path / f"{i}.png")
    return {"gray": root / "gray", "colour": root / "colour"}


def _colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random bright foreground colour on a random dark background colour: the same objects, now seen by a
    colour camera (luminance ≥ 110 for the digit, ≤ 40 for the background)."""
    luma = np.array([0.299, 0.587, 0.114])
    while True:
        foreground, background = rng.integers(0, 256, 3), rng.integers(0, 80, 3)
        if foreground @ luma >= 110 and background @ luma <= 40:
            return foreground, background


def grow(graft, source: Path, output: Path, imprint: str | None, probe: str, recalibrate: str) -> list:
    result = graft.reshape(
        source,
        output,
        channels=3,
        size=128,
        recalibrate=recalibrate,
        insert_after="layer3",
        add_classes=["8", "9"],
        imprint=imprint,
        probe=probe,
        console=None,
    )
    return [*result.certificates, result.overall]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--base-epochs", type=int, default=4, help="epochs of the original gray model")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate of the one-epoch runs")
    parser.add_argument("--scratch-lrs", type=float, nargs="+", default=[1e-3, 4e-3], help="scratch gets the best")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()

    import graft
    from graft.bundle import Bundle
    from graft.models.factory import create_model

    common = {"batch_size": 32, "workers": 0, "force": True}
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        folders = write_digit_folders(tmp / "data")
        colour, gray = f"folder:{folders['colour']}", f"folder:{folders['gray']}"
        for seed in range(args.seeds):
            started = time.perf_counter()
            base = graft.train(
                data=gray,
                model="resnet10t",
                input_mode="fold",
                size=64,
                epochs=args.base_epochs,
                seed=seed,
                run_dir=str(tmp / f"base{seed}"),
                **common,
            )
            base_seconds = time.perf_counter() - started
            colour_train = f"folder:{folders['colour'] / 'train'}"  # imprint and recalibrate: training images only
            certificates = grow(graft, base.bundle.path, tmp / f"grown{seed}", colour_train, colour, colour_train)
            before = graft.evaluate(tmp / f"grown{seed}", data=colour, split="test").accuracy
            started = time.perf_counter()
            tuned = graft.train(
                data=colour,
                weights=str(tmp / f"grown{seed}"),
                epochs=1,
                lr=args.lr,
                seed=seed,
                run_dir=str(tmp / f"ft{seed}"),
                **common,
            )
            tuned_seconds = time.perf_counter() - started

            # The same new architecture from random weights: the same surgery on an untrained model.
            model, arch, spec, _ = create_model("resnet10t", 8, input_mode="fold", size=64)
            Bundle(model.eval(), arch, spec, [str(i) for i in range(8)]).save(tmp / f"random{seed}", overwrite=True)
            grow(graft, tmp / f"random{seed}", tmp / f"random-grown{seed}", None, colour, colour_train)
            scratch = {
                lr: graft.train(
                    data=colour,
                    weights=str(tmp / f"random-grown{seed}"),
                    epochs=1,
                    lr=lr,
                    seed=seed,
                    run_dir=str(tmp / f"scratch{seed}-{lr}"),
                    **common,
                ).bundle.metrics["test_acc"]
                for lr in args.scratch_lrs
            }
            rows.append(
                {
                    "seed": seed,
                    "base_gray_test_acc": base.bundle.metrics["test_acc"],
                    "base_seconds": round(base_seconds, 1),
                    "certificates": [c.to_dict() for c in certificates],
                    "grown_before_finetune_acc": before,
                    "grown_finetuned_1_epoch_acc": tuned.bundle.metrics["test_acc"],
                    "finetune_seconds": round(tuned_seconds, 1),
                    "scratch_1_epoch_acc_by_lr": scratch,
                    "scratch_1_epoch_acc": max(scratch.values()),
                }
            )
            print(json.dumps(rows[-1]["certificates"][0]["verdict"]), flush=True)

    print("\ncertificates (seed 0):")
    for certificate in rows[0]["certificates"]:
        print(
            f"  {certificate['verdict']:<11} {certificate['operation']:<34} max |Δlogit| "
            f"{certificate['max_abs_logit_delta']:.2e}  top-1 agreement {certificate['top1_agreement']:.2%}"
        )
    print(f"\n{'':<52}" + "".join(f"seed {r['seed']:<6}" for r in rows) + "mean")
    for key, label in (
        ("base_gray_test_acc", "original 64×64×1, digits 0–7 (gray test)"),
        ("grown_before_finetune_acc", "grown 128×128×3, 0–9, before fine-tuning"),
        ("grown_finetuned_1_epoch_acc", "grown + 1 epoch fine-tuning"),
        ("scratch_1_epoch_acc", "same architecture from scratch, 1 epoch (best lr)"),
    ):
        values = [r[key] for r in rows]
        print(f"{label:<52}" + "".join(f"{v:<11.2%}" for v in values) + f"{statistics.mean(values):.2%}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
