"""`graft surgery`: change a trained model's shape or classes, certified; the flags map onto `graft.surgery`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from graft.errors import GraftError
from graft.io import json_text
from graft.progress import console

# The defaults of graft.surgery.reshape (kept here as literals: this module must not import torch; a test checks them).
HEAL_STEPS, HEAL_TEMPERATURE, HEAL_LR, HEAL_BATCH = 200, 2.0, 1e-3, 32


def _names(value: str | None) -> list[str] | None:
    return None if value is None else [part.strip() for part in value.split(",") if part.strip()]


def _widths(values: list[str] | None) -> dict[str, int] | None:
    widths = {}
    for value in values or []:
        layer, _, width = value.rpartition("=")
        if not layer or not width.isdigit():
            raise GraftError(f"--widen takes LAYER=WIDTH, e.g. layer1.0.conv1=96 (got {value!r})")
        widths[layer] = int(width)
    return widths or None


def surgery_command(
    bundle: Annotated[Path, typer.Argument(help="Bundle to change (it is never modified, even with --force).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where the new bundle goes.")],
    channels: Annotated[
        int | None, typer.Option(help="New input channel count: 3 takes colour (exactly the old model on gray).")
    ] = None,
    size: Annotated[int | None, typer.Option("--size", "-s", help="New square input size in pixels.")] = None,
    size_mode: Annotated[
        str,
        typer.Option(
            metavar="<stem|resample>",
            help="How --size is reached. stem (the default): a learnable resize layer in front of the network "
            "computes exactly the bundle's own resize to the old size (certified exact: the new model sees a large "
            "image as the old one saw it shrunk), so fine-tuning starts from the old model; it led after one epoch "
            "of fine-tuning on the surgery story bench. resample: the same weights see the image at the new scale "
            "(approximate, often breaking: follow it with --recalibrate or --heal); use it when the network itself "
            "should run at the new size (a smaller size then costs less) or above ~1024 px a side.",
        ),
    ] = "stem",
    insert_after: Annotated[
        list[str] | None,
        typer.Option(help="Insert an identity-initialised block after this stage (repeatable), e.g. layer2."),
    ] = None,
    block: Annotated[
        str | None,
        typer.Option(
            metavar="<relu|residual|transformer>",
            help="relu (ReLU(x+BN(Conv x)), exact after a ReLU) or residual (x+BN(Conv x), exact anywhere); "
            "both start with BN at zero, so they stay identities in train mode. transformer (after a ViT block): "
            "a copy of that block with attn.proj and mlp.fc2 at zero. [default: transformer after a transformer "
            "block, else relu]",
        ),
    ] = None,
    widen: Annotated[
        list[str] | None,
        typer.Option(
            help="LAYER=WIDTH: more output channels for a conv (repeatable); a conv writing into a residual sum "
            "widens the whole residual stream with it."
        ),
    ] = None,
    classes: Annotated[str | None, typer.Option(help="The full new class list, comma-separated.")] = None,
    add_classes: Annotated[str | None, typer.Option(help="Classes to add, comma-separated.")] = None,
    drop_classes: Annotated[str | None, typer.Option(help="Classes to remove, comma-separated.")] = None,
    imprint: Annotated[
        str | None, typer.Option(help="Data source with examples of the new classes, to imprint their weights.")
    ] = None,
    architecture: Annotated[
        str | None,
        typer.Option(
            "--architecture",
            "--into",
            help="Move the weights into another timm architecture, by name and shape (with --heal, the function "
            "follows).",
        ),
    ] = None,
    recalibrate: Annotated[
        str | None, typer.Option(help="Data source whose images re-estimate BatchNorm statistics (labels unused).")
    ] = None,
    heal: Annotated[
        str | None,
        typer.Option(
            metavar="DATA",
            help="Data source (labels unused) on which the new model learns to match the old one's logits after "
            "the changes (distillation); the certificate shows the agreement before and after. For approximate "
            "or breaking changes (--size, --architecture, …).",
        ),
    ] = None,
    heal_steps: Annotated[int, typer.Option(help="Healing: optimizer steps (batches).")] = HEAL_STEPS,
    heal_temperature: Annotated[
        float, typer.Option(help="Healing: softmax temperature of the matched logits (higher: more of the ranking).")
    ] = HEAL_TEMPERATURE,
    heal_lr: Annotated[float, typer.Option(help="Healing: peak learning rate (AdamW, cosine decay).")] = HEAL_LR,
    heal_batch: Annotated[int, typer.Option(help="Healing: images per step.")] = HEAL_BATCH,
    seed: Annotated[int, typer.Option(help="Seeds the probe draw, new blocks' and copies' init, and healing.")] = 0,
    probe: Annotated[
        str | None,
        typer.Option(
            help="Data source for the certificate's probe images. [default: the bundle's own data if readable "
            "offline, else synthetic]"
        ),
    ] = None,
    probe_count: Annotated[int, typer.Option(min=1, help="How many probe images.")] = 64,
    require: Annotated[
        str | None,
        typer.Option(
            metavar="<exact|approximate>",
            help="exact or approximate: write nothing unless every step and the whole chain reach it.",
        ),
    ] = None,
    data_root: Annotated[str | None, typer.Option(help="Where data sets are looked for.")] = None,
    offline: Annotated[bool, typer.Option("--offline", help="Never download data.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing output bundle.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the certificates as JSON on stdout.")] = False,
) -> None:
    """Change a trained model's channels, size, depth, width, classes or architecture, certify what changed, and
    optionally heal it back towards the old model (--heal).

    \b
    Examples:
      graft surgery runs/x/bundle -o rgb128 --channels 3 --size 128 --insert-after layer2
      graft surgery runs/x/bundle -o big --size 128 --size-mode stem --require exact
      graft surgery runs/x/bundle -o more --add-classes 8,9 --imprint digits --probe digits
      graft surgery runs/x/bundle -o big --size 128 --heal folder:photos --probe digits
    """
    from graft.surgery import reshape as run_surgery

    result = run_surgery(
        bundle,
        output,
        architecture=architecture,
        channels=channels,
        size=size,
        size_mode=size_mode,
        insert_after=insert_after,
        block=block,
        widen=_widths(widen),
        classes=_names(classes),
        add_classes=_names(add_classes),
        drop_classes=_names(drop_classes),
        imprint=imprint,
        recalibrate=recalibrate,
        heal=heal,
        heal_steps=heal_steps,
        heal_temperature=heal_temperature,
        heal_lr=heal_lr,
        heal_batch=heal_batch,
        seed=seed,
        probe=probe,
        probe_count=probe_count,
        require=require,
        data_root=data_root,
        download=not offline,
        overwrite=force,
        console=None if as_json else console(),
    )
    if as_json:
        steps = [c.to_dict() for c in result.certificates]
        overall = result.overall.to_dict() if result.overall else None
        print(json_text({"verdict": result.verdict, "steps": steps, "overall": overall}))
