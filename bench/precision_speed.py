"""bfloat16 autocast against float32, side by side in one process: training steps per CPU-second for the small
MNIST model and for the reference's DenseNet121 (64 px, flatten head), with and without channels-last.

The settings take turns (round-robin, `--rounds` times `--steps` steps each) so that a neighbour's load falls on
all of them alike; CPU time (user+sys of this process) is the figure to read on a shared machine, wall time is
printed beside it. Each step is a training step as graft takes it (autocast forward, float32 cross-entropy,
backward, AdamW) on random inputs of the model's input shape.

    uv run python bench/precision_speed.py --json bench/results/precision_speed.json
    uv run python bench/precision_speed.py --only graft_cnn_s --threads 2
    uv run python bench/precision_speed.py --only resnet18 --batch 32   # one batch size for every model
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from pathlib import Path

# (label, model, input mode, head, size, batch)
MODELS = [
    ("graft_cnn_s 28px", "graft_cnn_s", "fold", "pool", 28, 256),
    ("resnet18 32px fold", "resnet18", "fold", "pool", 32, 128),
    ("densenet121 64px flatten", "densenet121", "replicate", "flatten", 64, 32),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--only", help="models whose label contains this")
    parser.add_argument("--batch", type=int, help="one batch size for every model (default: each model's own)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import torch
    import torch.nn.functional as F

    from graft.models.factory import create_model
    from graft.training.runtime import cpu_supports_bf16

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    settings = []
    for label, name, mode, head, size, batch in MODELS:
        if args.only and args.only not in label:
            continue
        batch = args.batch or batch
        label = f"{label} b{batch}"
        for bf16 in (False, True):
            for channels_last in (False, True):
                model, _, spec, _ = create_model(name, 10, input_mode=mode, head=head, size=size)
                fmt = torch.channels_last if channels_last else torch.contiguous_format
                model = model.to(memory_format=fmt).train()
                x = torch.randn(batch, spec.channels, size, size).contiguous(memory_format=fmt)
                y = torch.randint(0, 10, (batch,))
                optimizer = torch.optim.AdamW(model.parameters(), 1e-4)
                name_ = f"{label} {'bf16' if bf16 else 'fp32'}{' channels-last' if channels_last else ''}"
                settings.append({"name": name_, "model": model, "x": x, "y": y, "opt": optimizer, "bf16": bf16})

    def step(s: dict) -> None:
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if s["bf16"] else contextlib.nullcontext()
        with autocast:
            loss = F.cross_entropy(s["model"](s["x"]).float(), s["y"])
        s["opt"].zero_grad(set_to_none=True)
        loss.backward()
        s["opt"].step()

    for s in settings:  # one untimed step each: first-call costs (oneDNN primitive creation)
        step(s)
        s["cpu"] = s["wall"] = 0.0
        s["images"] = 0
    for _ in range(args.rounds):
        for s in settings:
            cpu, wall = time.process_time(), time.perf_counter()
            for _ in range(args.steps):
                step(s)
            s["cpu"] += time.process_time() - cpu
            s["wall"] += time.perf_counter() - wall
            s["images"] += args.steps * len(s["y"])
    rows = [
        {
            "setting": s["name"],
            "img_per_cpu_s": s["images"] / s["cpu"],
            "img_per_wall_s": s["images"] / s["wall"],
            "images": s["images"],
        }
        for s in settings
    ]
    load = os.getloadavg()[0]
    print(f"torch {torch.__version__}, {args.threads} threads, native bf16: {cpu_supports_bf16()}, load {load:.1f}")
    print(f"{'setting':<48} {'img/CPU-s':>10} {'img/s wall':>11}")
    for row in rows:
        print(f"{row['setting']:<48} {row['img_per_cpu_s']:10.1f} {row['img_per_wall_s']:11.1f}")
    if args.json:
        from graft.io import atomic_write_json

        report = {"threads": args.threads, "batch": args.batch, "rows": rows, "load_average": os.getloadavg()}
        atomic_write_json(args.json, report)


if __name__ == "__main__":
    main()
