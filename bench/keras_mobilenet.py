"""Does an imported Keras ImageNet MobileNet help on MNIST? Pretrained vs random initialisation, equal budget.

Imports the verified ImageNet MobileNet v1 (alpha 0.25, Keras .h5) with `graft.import_keras`, then fine-tunes it on
MNIST with `graft.train(weights=BUNDLE)` in the `replicate` and `fold` input modes, and trains the same architecture
(`keras_mobilenetv1`, channel multiplier 0.25, TF padding, BN epsilon 1e-3) from random initialisation with the same
settings. Prints validation accuracy after every epoch and the final test accuracy; writes the rows as JSON.

    uv run python bench/keras_mobilenet.py                          # 64 px, 10 000 train images, 3 epochs
    uv run python bench/keras_mobilenet.py --size 32 --epochs 2 --max-train 5000

Needs ../shared/weights/mobilenet_v1_0.25_224.h5 and MNIST under $GRAFT_DATA/mnist (or ../shared/datasets/mnist).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO.parent / "shared" / "weights" / "mobilenet_v1_0.25_224.h5"


def run(args: argparse.Namespace, bundle: Path, mode: str, init: str, tmp: Path) -> dict:
    import graft

    settings = dict(
        data="mnist",
        data_root=args.data_root,
        input_mode=mode,
        size=args.size,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        max_train=args.max_train,
        download=False,
        run_dir=str(tmp / f"run-{mode}-{init}"),
        workers=0,
        threads=args.threads,
    )
    if init == "imagenet":
        settings["weights"] = str(bundle)  # the bundle's architecture (timm name + kwargs) comes with it
    else:
        recorded = graft.load(bundle).architecture
        settings["model"], settings["model_kwargs"] = recorded.timm_name, dict(recorded.timm_kwargs)
    started = time.perf_counter()
    result = graft.train(**settings)
    return {
        "mode": mode,
        "init": init,
        "size": args.size,
        "valid_acc_per_epoch": [h["valid_acc"] for h in result.history],
        "train_acc_per_epoch": [h["train_acc"] for h in result.history],
        "test_acc": result.bundle.metrics["test_acc"],
        "train_images_per_s": result.bundle.metrics["train_images_per_s"],
        "wall_seconds": time.perf_counter() - started,
        "architecture": result.bundle.architecture.to_dict(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--max-train", type=int, default=10000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=4e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: steady figures on a shared 2-core machine)"
    )
    parser.add_argument("--modes", nargs="+", default=["replicate", "fold"])
    parser.add_argument("--weights", type=Path, default=WEIGHTS)
    parser.add_argument("--data-root", default=os.environ.get("GRAFT_DATA") or str(REPO.parent / "shared" / "datasets"))
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "keras_mobilenet.json")
    args = parser.parse_args()
    if not args.weights.is_file():
        sys.exit(f"the ImageNet MobileNet is not at {args.weights}")

    import graft

    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        imported = graft.import_keras(args.weights, tmp / "mobilenet")
        print(
            f"imported {args.weights.name}: {imported.provenance.keras.application} → "
            f"{imported.architecture.timm_name} {imported.architecture.timm_kwargs}",
            flush=True,
        )
        for mode in args.modes:
            for init in ("imagenet", "random"):
                print(f"… {mode}, {init} init, {args.size}×{args.size}", file=sys.stderr, flush=True)
                rows.append(run(args, tmp / "mobilenet", mode, init, tmp))

    setting = (
        f"MNIST, {args.max_train} train images, {args.size}×{args.size}, {args.epochs} epochs, "
        f"batch {args.batch_size}, lr {args.lr} (AdamW, one-cycle), seed {args.seed}, "
        f"{args.threads} thread(s) on {os.cpu_count()} CPUs"
    )
    print(f"\nKeras ImageNet MobileNet v1 0.25 imported into graft vs random init, {setting}\n")
    epochs = " | ".join(f"valid acc ep {e}" for e in range(1, args.epochs + 1))
    print(f"| mode | init | {epochs} | test acc | train img/s | wall s |")
    print("|---|---|" + "---|" * (args.epochs + 3))
    for r in rows:
        per_epoch = " | ".join(f"{a:.2%}" for a in r["valid_acc_per_epoch"])
        print(
            f"| {r['mode']} | {r['init']} | {per_epoch} | {r['test_acc']:.2%} | {r['train_images_per_s']:.0f} "
            f"| {r['wall_seconds']:.0f} |"
        )
    from graft.io import atomic_write_json

    args.json.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.json, {"setting": setting, "rows": rows})
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
