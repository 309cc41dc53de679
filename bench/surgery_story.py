"""The second user story, end to end: grow a trained gray model instead of starting over.

1. Train a small CNN (resnet10t, `fold` mode) at 64×64×1 on scikit-learn's digits 0–7 (gray).
2. Surgery to 128×128×3 with one more block after `layer3` and two extra classes (8, 9, imprinted from their
   training images), the size change made two ways (issue 18):
   - `stem`: a fixed downsampling stem in front of the old network (exact: the old model on the image resized to 64);
   - `resample`: the same weights see the 128-px image (approximate), followed by BatchNorm recalibration;
   each with and without healing (`heal=`: distil the original into the grown model on the unlabelled colour
   training images). Every step prints its certificate; the whole-chain agreement with the original is reported.
3. Fine-tune each grown model for one epoch on colour digits 0–9 (each image a random foreground/background colour).
4. Compare with the same new architecture (the resample surgery applied to an untrained model) trained from scratch
   for one epoch with the same settings (scratch gets the best of `--scratch-lrs`). Repeated over seeds.

The colour digits are the gray ones painted with a random bright foreground colour on a random dark background: the
same objects seen by a colour camera. Recalibration, imprinting and healing use the colour *training* images only;
the certificates' probe is the colour *test* split.

    uv run python bench/surgery_story.py                 # 3 seeds, writes bench/results/surgery_story.json
    uv run python bench/surgery_story.py --seeds 1 --size-modes resample --json /tmp/story.json
    uv run python bench/surgery_story.py --write-data story --gray-classes 0,1,2 --colour-classes 0,1,2
        # only writes story/gray and story/colour (the docs/surgery.md example's data) and exits
    uv run python bench/surgery_story.py --seeds 1 --base-epochs 1 --max-train 64 --heal-steps 5 \\
        --scratch-lrs 1e-3 --json /tmp/smoke.json   # a smoke run of every path (not results)

Offline: the digits ship with scikit-learn. Results are written after every seed, so an interrupted run keeps the
seeds it finished.
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

GRAY_CLASSES = tuple(range(8))
COLOUR_CLASSES = tuple(range(10))


def write_digit_folders(
    root: Path, seed: int = 0, gray_classes=GRAY_CLASSES, colour_classes=COLOUR_CLASSES
) -> dict[str, Path]:
    """gray/{train,test}/<gray classes> and colour/{train,test}/<colour classes>, one seeded 80/20 split shared by
    both."""
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
            if label in gray_classes:
                path = root / "gray" / split / str(label)
                path.mkdir(parents=True, exist_ok=True)
                Image.fromarray(digits.image(int(i))[:, :, 0]).save(path / f"{i}.png")
            if label in colour_classes:
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


def grow(
    graft,
    source: Path,
    output: Path,
    size_mode: str,
    imprint: str | None,
    probe: str,
    colour_train: str,
    heal: bool = False,
    heal_steps: int = 100,
) -> object:
    """The story's surgery; `stem` needs no BatchNorm recalibration (it is exact), `resample` gets it."""
    size_kwargs = {"size_mode": size_mode}  # always named: the default is stem since issue 18
    return graft.reshape(
        source,
        output,
        channels=3,
        size=128,
        recalibrate=colour_train if size_mode == "resample" else None,
        insert_after="layer3",
        add_classes=["8", "9"],
        imprint=imprint,
        probe=probe,
        heal=colour_train if heal else None,
        heal_steps=heal_steps,
        overwrite=True,
        console=None,
        **size_kwargs,
    )


def variant_row(result, refused: str | None) -> dict:
    """What the table shows of one grown model before fine-tuning: its whole-chain agreement with the original."""
    if refused is not None:
        return {"refused": refused}
    overall = result.overall
    return {
        "verdict": overall.verdict,
        "agreement_with_original": overall.top1_agreement,
        "old_class_agreement": overall.old_class_agreement,
        "max_abs_logit_delta": overall.max_abs_logit_delta,
        "before_healing": overall.before_healing,
        "certificates": [c.to_dict() for c in result.certificates] + [overall.to_dict()],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--base-epochs", type=int, default=4, help="epochs of the original gray model")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate of the one-epoch runs")
    parser.add_argument("--scratch-lrs", type=float, nargs="+", default=[1e-3, 4e-3], help="scratch gets the best")
    parser.add_argument("--size-modes", nargs="+", default=["stem", "resample"])
    parser.add_argument("--heal-steps", type=int, default=100)
    parser.add_argument("--json", type=Path, default=Path("bench/results/surgery_story.json"))
    parser.add_argument("--max-train", type=int, help="train on this many images only: smoke runs, not results")
    parser.add_argument("--write-data", type=Path, help="only write the gray/colour digit folders here, and exit")
    parser.add_argument("--gray-classes", default=",".join(map(str, GRAY_CLASSES)))
    parser.add_argument("--colour-classes", default=",".join(map(str, COLOUR_CLASSES)))
    args = parser.parse_args()
    if args.write_data:
        gray, colour = (tuple(int(c) for c in text.split(",")) for text in (args.gray_classes, args.colour_classes))
        print(write_digit_folders(args.write_data, 0, gray, colour))
        return

    import graft
    from graft.bundle import Bundle
    from graft.errors import GraftError
    from graft.models.factory import create_model

    common = {"batch_size": 32, "workers": 0, "force": True, "max_train": args.max_train}
    rows = []
    variants = [(mode, healed) for mode in args.size_modes for healed in (False, True)]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        folders = write_digit_folders(tmp / "data")
        colour = f"folder:{folders['colour']}"
        colour_train = f"folder:{folders['colour'] / 'train'}"  # imprint, recalibrate, heal: training images only
        colour_test = f"folder:{folders['colour'] / 'test'}"  # the certificates' probe
        for seed in range(args.seeds):
            started = time.perf_counter()
            base = graft.train(
                data=f"folder:{folders['gray']}",
                model="resnet10t",
                input_mode="fold",
                size=64,
                epochs=args.base_epochs,
                seed=seed,
                run_dir=str(tmp / f"base{seed}"),
                **common,
            )
            row: dict = {
                "seed": seed,
                "base_gray_test_acc": base.bundle.metrics["test_acc"],
                "base_seconds": round(time.perf_counter() - started, 1),
                "variants": {},
            }
            for mode, healed in variants:
                name = f"{mode}{' + heal' if healed else ''}"
                output = tmp / f"grown{seed}-{mode}-{int(healed)}"
                started = time.perf_counter()
                try:
                    result = grow(
                        graft,
                        base.bundle.path,
                        output,
                        mode,
                        colour_train,
                        colour_test,
                        colour_train,
                        healed,
                        args.heal_steps,
                    )
                    refused = None
                except GraftError as error:  # e.g. an exact chain: healing has nothing to restore
                    result, refused = None, str(error)
                entry = variant_row(result, refused)
                entry["surgery_seconds"] = round(time.perf_counter() - started, 1)
                if refused is None:
                    entry["before_finetune_acc"] = graft.evaluate(output, data=colour, split="test").accuracy
                    started = time.perf_counter()
                    tuned = graft.train(
                        data=colour,
                        weights=str(output),
                        epochs=1,
                        lr=args.lr,
                        seed=seed,
                        run_dir=str(tmp / f"ft{seed}-{mode}-{int(healed)}"),
                        **common,
                    )
                    entry["finetuned_1_epoch_acc"] = tuned.bundle.metrics["test_acc"]
                    entry["finetune_seconds"] = round(time.perf_counter() - started, 1)
                row["variants"][name] = entry
                print(
                    f"seed {seed} {name}: {json.dumps({k: v for k, v in entry.items() if k != 'certificates'})}",
                    flush=True,
                )

            # The same new architecture from random weights: the resample surgery on an untrained model.
            model, arch, spec, _ = create_model("resnet10t", 8, input_mode="fold", size=64)
            Bundle(model.eval(), arch, spec, [str(i) for i in range(8)]).save(tmp / f"random{seed}", overwrite=True)
            grow(graft, tmp / f"random{seed}", tmp / f"random-grown{seed}", "resample", None, colour_test, colour_train)
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
            row["scratch_1_epoch_acc_by_lr"] = scratch
            row["scratch_1_epoch_acc"] = max(scratch.values())
            rows.append(row)
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(rows, indent=2) + "\n")  # after every seed
    print_table(rows)


def print_table(rows: list[dict]) -> None:
    """Per seed and on average: agreement with the original before fine-tuning, test accuracy after one epoch."""

    def line(label: str, values: list[float | None]) -> str:
        known = [v for v in values if v is not None]
        cells = "".join(f"{v:<10.1%}" if v is not None else f"{'—':<10}" for v in values)
        return f"{label:<44}" + cells + (f"{statistics.mean(known):.1%}" if known else "—")

    print(f"\n{'':<44}" + "".join(f"seed {r['seed']:<5}" for r in rows) + "mean")
    print(line("original 64×64×1, digits 0–7 (gray test)", [r["base_gray_test_acc"] for r in rows]))
    for name in rows[0]["variants"]:
        cells = [r["variants"][name] for r in rows]
        print(line(f"{name}: agreement with the original", [c.get("agreement_with_original") for c in cells]))
        print(line(f"{name}: test acc before fine-tuning", [c.get("before_finetune_acc") for c in cells]))
        print(line(f"{name}: test acc after 1 epoch", [c.get("finetuned_1_epoch_acc") for c in cells]))
        for reason in {c["refused"] for c in cells if "refused" in c}:
            print(f"  {name} refused: {reason}")
    print(line("from scratch, 1 epoch (best lr)", [r["scratch_1_epoch_acc"] for r in rows]))


if __name__ == "__main__":
    main()
