"""How fast the CLI answers, and the peak memory of a MNIST 64 px `fold` training, for one or more checkouts.

Issue 16 asks for `graft --help` and every `graft X --help` in ≤ 0.5 s, `graft predict BUNDLE one.png` in ≤ 2 s,
`graft info BUNDLE` in ≤ 1 s and a peak RSS ≤ 1 GB for the MNIST 64 px fold training. Each command runs through
this virtual environment's `graft` entry point (not `uv run`, which adds its own start-up), with the checkout's
`src` first on PYTHONPATH, so two checkouts (e.g. main and a branch) are compared side by side in one run, on the
same interpreter and packages, interleaved so that the machine's load hits both alike.

    uv run python bench/cli_latency.py                                   # this checkout
    uv run python bench/cli_latency.py --checkout ../main --checkout .   # before / after, side by side
    uv run python bench/cli_latency.py --runs 7 --train-images 0          # the CLI rows only (about 2 min, quiet)

The first rows are floors no change to graft can go below: a bare interpreter, `import torch`, and
`import torch, timm` (timm imports torchvision, and torchvision 0.29's roi_align imports torch._dynamo, which
imports triton); `graft predict` has to build a timm model, so it pays the last floor.

Each checkout's `src/graft` is copied to a temporary directory first, so Python may cache its bytecode there
(as an installed graft would) without writing into the checkout; one untimed run warms each command up. The
training row is a short run (`--train-images`, default 4096, 1 epoch, batch 64, resnet18 from scratch): the
whole MNIST set is still loaded; its peak RSS is the child process's own (`wait4`), the import floor included.
Needs MNIST under $GRAFT_DATA/mnist (or ../shared/datasets/mnist beside the repository) for the training row.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GRAFT = Path(sys.executable).with_name("graft")


def _env(src: Path) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # an installed graft has its bytecode cached; so may this copy
    return env


def run_once(args: list[str], src: Path) -> tuple[float, float, float]:
    """Wall seconds, peak RSS (MB) and CPU seconds (user + system) of `graft ARGS` (or of ARGS itself when it
    starts with this Python) in its own process; CPU time is what a loaded machine inflates least."""
    argv = args if args[0] == sys.executable else [str(GRAFT), *args]
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=_env(src), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read() if proc.stderr else ""
    if proc.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed ({proc.returncode}) with {src}:\n{err[-2000:]}")
    return wall, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime


def copy_source(checkout: Path, into: Path) -> Path:
    src = into / "src"
    shutil.copytree(checkout / "src" / "graft", src / "graft", ignore=shutil.ignore_patterns("__pycache__"))
    return src


def make_bundle(src: Path, out: Path) -> tuple[Path, Path]:
    """A tiny bundle (resnet10t, digits, 16 px) and one PNG to predict, made once and used for every checkout."""
    code = (
        "import graft, numpy as np\n"
        "from PIL import Image\n"
        f"graft.train(data='digits', model='resnet10t', input_mode='fold', size=16, epochs=1, batch_size=32,"
        f" run_dir={str(out / 'run')!r}, output={str(out / 'bundle')!r}, workers=0)\n"
        "pixels = (np.random.default_rng(0).random((28, 28)) * 255).astype('uint8')\n"
        f"Image.fromarray(pixels).save({str(out / 'one.png')!r})\n"
    )
    subprocess.run([sys.executable, "-c", code], env=_env(src), check=True, capture_output=True)
    return out / "bundle", out / "one.png"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkout", type=Path, action="append", help="a graft checkout (repeatable) [default: .]")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per command and checkout")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first (bytecode, page cache)")
    parser.add_argument("--bundle", type=Path, help="an existing bundle to time info/predict on [default: make one]")
    parser.add_argument("--image", type=Path, help="the image to predict (with --bundle)")
    parser.add_argument("--train-images", type=int, default=4096, help="training images of the RSS row (0: skip)")
    parser.add_argument("--data-root", default=os.environ.get("GRAFT_DATA") or str(REPO.parent / "shared" / "datasets"))
    args = parser.parse_args()
    checkouts = [c.resolve() for c in (args.checkout or [REPO])]

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        sources = {c: copy_source(c, tmp_path / f"c{i}") for i, c in enumerate(checkouts)}
        if args.bundle and args.image:
            bundle, photo = args.bundle.resolve(), args.image.resolve()
        else:
            bundle, photo = make_bundle(sources[checkouts[-1]], tmp_path / "work")
        commands = {  # the floors first: what no graft change can take below (the interpreter, torch, timm)
            "floor: python -c pass": [sys.executable, "-c", "pass"],
            "floor: import torch": [sys.executable, "-c", "import torch"],
            "floor: import torch, timm (torchvision, torch._dynamo)": [sys.executable, "-c", "import torch, timm"],
            "graft --help": ["--help"],
            "graft train --help": ["train", "--help"],
            "graft info BUNDLE": ["info", str(bundle)],
            "graft predict BUNDLE one.png": ["predict", str(bundle), str(photo)],
        }
        walls: dict[tuple[str, Path], list[float]] = {}
        cpus: dict[tuple[str, Path], list[float]] = {}
        rsses: dict[tuple[str, Path], list[float]] = {}
        for label, command in commands.items():
            print(f"… {label}", file=sys.stderr, flush=True)
            for _ in range(args.warmup):
                for checkout in checkouts:
                    run_once(command, sources[checkout])
            for _ in range(args.runs):
                for checkout in checkouts:  # interleaved: the machine's load falls on every checkout alike
                    wall, peak, cpu = run_once(command, sources[checkout])
                    walls.setdefault((label, checkout), []).append(wall)
                    rsses.setdefault((label, checkout), []).append(peak)
                    cpus.setdefault((label, checkout), []).append(cpu)
        rss: dict[Path, float] = {}
        if args.train_images:
            for checkout in checkouts:
                print(f"… training ({checkout})", file=sys.stderr, flush=True)
                train = ["train", "--data", "mnist", "--data-root", args.data_root, "--offline", "--model", "resnet18"]
                train += ["--input-mode", "fold", "--size", "64", "--epochs", "1", "--batch-size", "64"]
                train += ["--max-train", str(args.train_images), "--max-valid", "1024", "--max-test", "1024"]
                train += ["--run-dir", str(tmp_path / f"train{len(rss)}"), "--threads", "2"]
                rss[checkout] = run_once(train, sources[checkout])[1]

    load = f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}"
    print(f"\nwall seconds best / median of {args.runs} runs (CPU seconds, median; peak RSS MB, median); {load}\n")
    print("| command | " + " | ".join(str(c) for c in checkouts) + " |")
    print("|---|" + "---|" * len(checkouts))
    for label in commands:
        cells = [
            f"{min(walls[(label, c)]):.2f} / {statistics.median(walls[(label, c)]):.2f} "
            f"({statistics.median(cpus[(label, c)]):.2f}; {statistics.median(rsses[(label, c)]):.0f} MB)"
            for c in checkouts
        ]
        print(f"| {label} | " + " | ".join(cells) + " |")
    if rss:
        row = " | ".join(f"{rss[c]:.0f}" for c in checkouts)
        print(f"| peak RSS MB, fold 64 px resnet18, {args.train_images} train images, 1 epoch | {row} |")


if __name__ == "__main__":
    main()
