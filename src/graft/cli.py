"""The `graft` command line: a thin typed layer over the Python API.

User mistakes surface as one line on stderr and exit code 2; nothing is printed as a traceback.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from graft.errors import GraftError, Interrupted, first_line
from graft.progress import console

app = typer.Typer(
    name="graft",
    help="Fine-tune pretrained image classifiers, reshape trained models, train in rounds, serve to phones.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.command()
def train(
    recipe: Annotated[
        Path | None, typer.Argument(help="TOML recipe with any of the settings below; flags override it.")
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(
            "--data",
            "-d",
            help="Data source: mnist, fashion-mnist, kmnist, digits or folder:PATH. [default: digits]",
        ),
    ] = None,
    data_root: Annotated[
        str | None,
        typer.Option(help="Where data sets are looked for. [default: $GRAFT_DATA or the user cache]"),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="Any timm model name. [default: resnet18, or the --weights bundle's model]"),
    ] = None,
    pretrained: Annotated[str | None, typer.Option(help="'imagenet': fetch timm hub weights (needs internet).")] = None,
    weights: Annotated[
        str | None, typer.Option(help="Local weights: .safetensors, a PyTorch state dict, or a bundle.")
    ] = None,
    input_mode: Annotated[
        str | None,
        typer.Option(help="How gray data meets an RGB network: replicate, stem or fold. [default: replicate]"),
    ] = None,
    head: Annotated[
        str | None,
        typer.Option(help="pool (global pooling) or flatten (as the Keras reference). [default: pool]"),
    ] = None,
    size: Annotated[int | None, typer.Option("--size", "-s", help="Square input size in pixels. [default: 32]")] = None,
    resize: Annotated[
        str | None, typer.Option(help="stretch to the square, or crop the centre. [default: stretch]")
    ] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", "-e", help="[default: 5]")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", "-b", help="[default: 64]")] = None,
    optimizer: Annotated[str | None, typer.Option(help="adamw, adam or sgd. [default: adamw]")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate. [default: 0.004]")] = None,
    weight_decay: Annotated[float | None, typer.Option(help="[default: 0.05]")] = None,
    momentum: Annotated[float | None, typer.Option(help="SGD momentum, Nesterov when > 0. [default: 0.9]")] = None,
    schedule: Annotated[
        str | None, typer.Option(help="onecycle, cosine or constant (after warmup). [default: onecycle]")
    ] = None,
    warmup_epochs: Annotated[float | None, typer.Option(help="[default: 0.3]")] = None,
    label_smoothing: Annotated[float | None, typer.Option(help="[default: 0]")] = None,
    strategy: Annotated[
        str | None,
        typer.Option(
            help="finetune (all layers), transfer (frozen backbone, BatchNorm in inference mode, head only) or "
            "freeze-unfreeze (head for --head-epochs, then all layers). [default: finetune]"
        ),
    ] = None,
    head_epochs: Annotated[int | None, typer.Option(help="freeze-unfreeze: frozen epochs. [default: 1]")] = None,
    backbone_lr_ratio: Annotated[
        float | None,
        typer.Option(help="Backbone LR = lr × this. [default: 0.1 under freeze-unfreeze, else 1]"),
    ] = None,
    augment: Annotated[
        str | None, typer.Option(help="none, or reference: random rotation, zoom and shift. [default: none]")
    ] = None,
    rotate: Annotated[float | None, typer.Option(help="Augmentation: largest rotation, degrees. [default: 12]")] = None,
    zoom: Annotated[float | None, typer.Option(help="Augmentation: scale in [1-zoom, 1+zoom]. [default: 0.1]")] = None,
    shift: Annotated[float | None, typer.Option(help="Augmentation: largest shift / size. [default: 0.1]")] = None,
    ema: Annotated[float | None, typer.Option(help="Keep an EMA of the weights with this decay (e.g. 0.999).")] = None,
    patience: Annotated[
        int | None, typer.Option(help="Early stopping: epochs without a better valid accuracy before stopping.")
    ] = None,
    keep: Annotated[
        str | None, typer.Option(help="Bundle weights: last or best (valid accuracy). [default: best with --patience]")
    ] = None,
    precision: Annotated[
        str | None, typer.Option(help="auto (bf16 autocast where supported), fp32 or bf16. [default: auto]")
    ] = None,
    channels_last: Annotated[
        bool | None, typer.Option("--channels-last/--no-channels-last", help="Channels-last layout. [default: off]")
    ] = None,
    compile: Annotated[bool | None, typer.Option("--compile", help="torch.compile the model.")] = None,
    feature_cache: Annotated[
        bool | None,
        typer.Option("--feature-cache/--no-feature-cache", help="transfer, no augmentation: cache backbone features."),
    ] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda or cuda:N. [default: cuda when available]")] = None,
    valid_fraction: Annotated[
        float | None,
        typer.Option(help="Share of the training data held out for validation. [default: 0.2]"),
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seeds the split, initialisation and batch order. [default: 0]")
    ] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads. [default: all cores]")] = None,
    workers: Annotated[int | None, typer.Option(help="Decoding processes for folder data. [default: 2]")] = None,
    max_train: Annotated[int | None, typer.Option(help="Use only this many training images (quick trials).")] = None,
    output: Annotated[
        str | None, typer.Option("--output", "-o", help="Bundle directory. [default: RUN_DIR/bundle]")
    ] = None,
    run_dir: Annotated[
        str | None,
        typer.Option(help="Run directory for metrics, curves and report. [default: runs/<data>-<model>-<mode>-<time>]"),
    ] = None,
    force: Annotated[
        bool | None, typer.Option("--force", help="Replace an existing output bundle and run directory.")
    ] = None,
    offline: Annotated[
        bool | None, typer.Option("--offline", help="Never download data; fail with the files to provide.")
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(help="Continue an interrupted run from RUN_DIR/checkpoint.pt with its own settings."),
    ] = None,
) -> None:
    """Fine-tune a timm model on a data source and write a bundle (model.safetensors + graft.json).

    Checkpoints are written every epoch and on Ctrl-C/SIGTERM; `--resume RUN_DIR` continues to the same result.
    Under `torchrun --nproc-per-node N -m graft train ...` the processes train data-parallel.

    \b
    Examples:
      graft train --data mnist --model resnet18 --input-mode fold --size 32 --epochs 1
      graft train recipes/mnist-fold-32.toml --epochs 2
    """
    from graft.train import train as run_training

    settings = {k: v for k, v in locals().items() if k not in ("recipe", "offline", "run_training", "resume")}
    if offline:
        settings["download"] = False
    if resume is not None:
        if recipe is not None:
            raise GraftError("--resume continues a run with its own settings; give no recipe")
        run_training(resume=resume, **settings)
    else:
        run_training(recipe=recipe, **settings)


@app.command("eval")
def eval_command(
    bundle: Annotated[Path, typer.Argument(help="Bundle directory, or a rounds project (its promoted bundle).")],
    data: Annotated[
        str | None,
        typer.Option("--data", "-d", help="Data source. [default: the one the bundle was trained on]"),
    ] = None,
    split: Annotated[
        str, typer.Option(help="test, valid, train, or all (every labelled image: for new data such as a folder).")
    ] = "test",
    data_root: Annotated[str | None, typer.Option(help="Where data sets are looked for.")] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Directory for eval.json, confusion.png, misclassified.png.\n[default: runs/eval-BUNDLE-DATA-SPLIT]",
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Images per forward pass.")] = 256,
    offline: Annotated[bool, typer.Option("--offline", help="Never download data.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON on stdout.")] = False,
) -> None:
    """Loss, accuracy, per-class precision/recall, confusion matrix and misclassified examples."""
    from graft.api import evaluate
    from graft.bundle import load
    from graft.data.sources import source_label

    if split not in ("test", "valid", "train", "all"):
        raise GraftError(f"unknown split {split!r}; choose test, valid, train or all")
    bundle = _bundle_dir(bundle)
    loaded = load(bundle)
    source = data or loaded.provenance.get("data", {}).get("source") or "data"
    name = source_label(source)
    # Bundles written by `graft train` are RUN_DIR/bundle: name the output after the run, not "bundle".
    resolved = bundle.resolve()
    label = resolved.parent.name if resolved.name == "bundle" else resolved.name
    out_dir = output or Path("runs") / f"eval-{label}-{name}-{split}"
    result = evaluate(
        loaded,
        data,
        split=split,  # type: ignore[arg-type]
        data_root=data_root,
        output=out_dir,
        batch_size=batch_size,
        download=not offline,
        console=console(),
    )
    if as_json:
        print(json.dumps({**result.to_dict(), "output": str(out_dir)}, indent=2))
        return
    table = Table(title=f"{bundle} on {source} ({split}): accuracy {result.accuracy:.2%}, loss {result.loss:.4f}")
    for column in ("class", "precision", "recall", "support"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for row in result.per_class():
        table.add_row(row["class"], _pct(row["precision"]), _pct(row["recall"]), str(row["support"]))
    console().print(table)
    console().print(f"wrote {out_dir}/eval.json, confusion.png, misclassified.png")


def _bundle_dir(path: Path) -> Path:
    """`path` itself, or the promoted bundle of the rounds project at `path` (said on stderr)."""
    from graft.rounds.project import current_bundle, is_project

    if not is_project(path):
        return path
    bundle, pointer = current_bundle(path)
    print(f"{path} is a rounds project: using round {pointer['index']} ({pointer['round']}), {bundle}", file=sys.stderr)
    return bundle


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.2%}"


@app.command()
def predict(
    bundle: Annotated[Path, typer.Argument(help="Bundle directory, or a rounds project (its promoted bundle).")],
    images: Annotated[list[Path], typer.Argument(help="Image files (JPEG, PNG, WebP, BMP).")],
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="How many classes to show per image.")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
) -> None:
    """Top-k classes with probabilities, preprocessed exactly as in training (from the bundle's spec)."""
    from graft.bundle import load

    predictions = load(_bundle_dir(bundle)).predict(images, top_k=top_k)  # every file is checked before any output
    if as_json:
        print(
            json.dumps(
                [{"image": str(p), **pred.to_dict()} for p, pred in zip(images, predictions, strict=True)],
                indent=2,
            )
        )
        return
    for path, pred in zip(images, predictions, strict=True):
        ranked = ", ".join(f"{c} ({p:.1%})" for c, p in zip(pred.classes, pred.probabilities, strict=True))
        print(f"{path}: {ranked}")


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


@app.command("surgery")
def surgery_command(
    bundle: Annotated[Path, typer.Argument(help="Bundle to change (it is never modified).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where the new bundle goes.")],
    channels: Annotated[
        int | None, typer.Option(help="New input channel count: 3 takes colour (exactly the old model on gray).")
    ] = None,
    size: Annotated[int | None, typer.Option("--size", "-s", help="New square input size in pixels.")] = None,
    insert_after: Annotated[
        list[str] | None,
        typer.Option(help="Insert an identity-initialised block after this stage (repeatable), e.g. layer2."),
    ] = None,
    block: Annotated[
        str, typer.Option(help="relu (Conv+BN+ReLU, exact after a ReLU) or residual (x+BN(Conv x), exact anywhere).")
    ] = "relu",
    widen: Annotated[
        list[str] | None, typer.Option(help="LAYER=WIDTH: more output channels for a conv (repeatable).")
    ] = None,
    classes: Annotated[str | None, typer.Option(help="The full new class list, comma-separated.")] = None,
    add_classes: Annotated[str | None, typer.Option(help="Classes to add, comma-separated.")] = None,
    drop_classes: Annotated[str | None, typer.Option(help="Classes to remove, comma-separated.")] = None,
    imprint: Annotated[
        str | None, typer.Option(help="Data source with examples of the new classes, to imprint their weights.")
    ] = None,
    architecture: Annotated[
        str | None, typer.Option(help="Move the weights into another timm architecture, by name and shape.")
    ] = None,
    recalibrate: Annotated[
        str | None, typer.Option(help="Data source whose images re-estimate BatchNorm statistics (labels unused).")
    ] = None,
    probe: Annotated[
        str | None, typer.Option(help="Data source for the certificate's probe images. [default: synthetic]")
    ] = None,
    probe_count: Annotated[int, typer.Option(min=1, help="How many probe images.")] = 64,
    require: Annotated[
        str | None, typer.Option(help="exact or approximate: write nothing unless every step reaches it.")
    ] = None,
    data_root: Annotated[str | None, typer.Option(help="Where data sets are looked for.")] = None,
    offline: Annotated[bool, typer.Option("--offline", help="Never download data.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing output bundle.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the certificates as JSON on stdout.")] = False,
) -> None:
    """Change a trained model's channels, size, depth, width or classes, and certify what changed.

    \b
    Examples:
      graft surgery runs/x/bundle -o rgb128 --channels 3 --size 128 --insert-after layer2
      graft surgery runs/x/bundle -o more --add-classes 8,9 --imprint digits --probe digits
    """
    from graft.surgery import surgery as run_surgery

    result = run_surgery(
        bundle,
        output,
        architecture=architecture,
        channels=channels,
        size=size,
        insert_after=insert_after,
        block=block,
        widen=_widths(widen),
        classes=_names(classes),
        add_classes=_names(add_classes),
        drop_classes=_names(drop_classes),
        imprint=imprint,
        recalibrate=recalibrate,
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
        print(json.dumps({"verdict": result.verdict, "steps": steps, "overall": overall}, indent=2))


@app.command()
def info(
    bundle: Annotated[Path, typer.Argument(help="Bundle directory, or a rounds project (its promoted bundle).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
    layers: Annotated[
        bool, typer.Option("--layers", help="List the model's layers with their output shapes (for surgery).")
    ] = False,
) -> None:
    """Architecture, parameters, input spec, classes, metrics and surgery history of a bundle."""
    from graft.api import info as bundle_info

    bundle = _bundle_dir(bundle)
    if layers:
        from graft.api import layer_table

        for name, kind, shape in layer_table(bundle):
            print(f"{name:<40} {kind:<24} {shape}")
        return
    meta = bundle_info(bundle)
    if as_json:
        print(json.dumps(meta, indent=2, default=str))
        return
    print("\n".join(_describe(meta)))


@app.command("import-keras")
def import_keras_command(
    file: Annotated[Path, typer.Argument(help="Keras model: .h5 (full model or weights) or .keras archive.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Bundle directory to write.")],
    architecture: Annotated[
        Path | None,
        typer.Option(help="For weights-only files: the model's JSON (model.to_json()) or a full model file."),
    ] = None,
    classes: Annotated[
        str | None,
        typer.Option(help="Class names: a,b,c or a file with one per line. [default: ImageNet's or class_0…]"),
    ] = None,
    preprocess: Annotated[
        str | None,
        typer.Option(help="tf, torch, caffe, raw (pixels 0-255) or unit (0-1). [default: the application's]"),
    ] = None,
    size: Annotated[
        int | None, typer.Option("--size", "-s", min=1, help="Input size for models without a fixed one.")
    ] = None,
    generic: Annotated[
        bool, typer.Option("--generic", help="Keep the Keras layer graph even for a Keras Application.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing output bundle.")] = False,
) -> None:
    """Import a Keras model into a bundle with the same logits (no TensorFlow needed).

    \b
    Examples:
      graft import-keras mobilenet_v1_0.25_224.h5 -o bundles/mobilenet
      graft import-keras digits.keras -o bundles/digits --classes 0,1,2,3,4,5,6,7,8,9
    """
    from graft.models.keras.importer import import_keras

    bundle = import_keras(
        file,
        output,
        architecture=architecture,
        classes=classes,
        preprocess=preprocess,
        size=size,
        generic=generic,
        overwrite=force,
    )
    keras = bundle.provenance["keras"]
    what = keras["application"] or f"layer graph ({len(bundle.architecture.graph['layers'])} layers)"
    print(
        f"imported {file} ({keras['file_kind']}, Keras {keras['keras_version'] or '?'}) as {what}: "
        f"{bundle.architecture.timm_name}, {len(bundle.classes)} classes, input "
        f"{bundle.spec.size[0]}×{bundle.spec.size[1]}×{bundle.spec.channels}, preprocessing {keras['preprocess']}"
    )
    for note in keras["notes"]:
        print(f"  note: {note}")
    print(f"bundle: {output}")


data_app = typer.Typer(
    name="data",
    help="Make data sets: frames from phone videos, the clutter benchmark.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(data_app)


@data_app.command("frames")
def frames_command(
    videos: Annotated[
        list[Path], typer.Argument(help="Video files (MP4, MOV, WebM, …); frames of all go to one class.")
    ],
    label: Annotated[str, typer.Option("--label", "-l", help="Class name: frames go to OUTPUT/LABEL/.")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Data set folder (e.g. photos/train); created when missing.")
    ],
    every: Annotated[int | None, typer.Option(help="Keep every Nth frame. [default: 1, all]")] = None,
    fps: Annotated[float | None, typer.Option(help="Keep about F frames per second of video instead.")] = None,
    size: Annotated[
        int | None,
        typer.Option(
            "--size", "-s", help="Shorter side in pixels, aspect kept; with --crop center, S×S. [default: as recorded]"
        ),
    ] = None,
    crop: Annotated[str, typer.Option(help="none, or center: the largest centred square.")] = "none",
    limit: Annotated[int | None, typer.Option(help="At most this many frames per video.")] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace frames an earlier run wrote for these videos.")
    ] = False,
) -> None:
    """Extract frames from phone videos into a class folder, upright, as PNG (VIDEO-f000123.png).

    \b
    Examples:
      graft data frames cup1.mp4 cup2.mov --label cup -o photos/train --every 10 --size 128
      graft data frames cup3.mp4 --label cup -o photos/test --fps 2 --size 128 --crop center
    """
    from graft.data.video import extract_frames

    result = extract_frames(
        videos,
        label=label,
        out=output,
        every=every,
        fps=fps,
        size=size,
        crop=crop,
        limit=limit,
        overwrite=force,
        console=console(),
    )
    for video in result.videos:
        applied = [f"turned {video.rotation}°"] * bool(video.rotation) + ["mirrored"] * video.flipped
        print(
            f"{video.video}: {video.written} frames written, {video.skipped} skipped "
            f"({', '.join([f'{video.width}×{video.height}', *applied])})"
        )
        for note in video.notes[:3]:
            print(f"  note: FFmpeg reported: {note}")
    if len(result.videos) > 1:
        print(f"{result.written} frames written, {result.skipped} skipped, from {len(result.videos)} videos")
    print(f"class folder: {result.folder}")


@data_app.command("clutter")
def clutter_command(
    source: Annotated[str, typer.Argument(help="Digit source: digits, mnist, fashion-mnist, kmnist or folder:PATH.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Benchmark folder: level-1 … level-L inside.")],
    levels: Annotated[int, typer.Option(help="Levels, from plain (1) to heavy clutter (L).")] = 6,
    seed: Annotated[int, typer.Option(help="Seeds the partition and every random choice.")] = 0,
    size: Annotated[int, typer.Option("--size", "-s", help="Square image size in pixels.")] = 32,
    max_train: Annotated[int | None, typer.Option(help="At most this many training images per level.")] = None,
    max_test: Annotated[int | None, typer.Option(help="At most this many test images per level.")] = None,
    reuse_images: Annotated[
        bool,
        typer.Option("--reuse-images", help="Render every source image at every level (default: each at one level)."),
    ] = False,
    preview: Annotated[bool, typer.Option("--preview/--no-preview", help="Write preview.png.")] = True,
    data_root: Annotated[str | None, typer.Option(help="Where data sets are looked for.")] = None,
    offline: Annotated[bool, typer.Option("--offline", help="Never download data.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing clutter benchmark.")] = False,
) -> None:
    """Build the clutter benchmark: a digit source on ever busier backgrounds, one folder: data set per level.

    \b
    Level 1 is the plain source; then gradients, noise, textures, distractor strokes and colour are added.
    Examples:
      graft data clutter digits -o clutter-digits
      graft data clutter mnist -o clutter-mnist --levels 6 --max-train 5000 --seed 1
      graft train --data folder:clutter-mnist/level-1 --size 32
    """
    from graft.data.clutter import make_clutter

    result = make_clutter(
        source,
        output,
        levels=levels,
        seed=seed,
        size=size,
        max_train=max_train,
        max_test=max_test,
        reuse_images=reuse_images,
        data_root=data_root,
        download=not offline,
        overwrite=force,
        preview=preview,
        console=console(),
    )
    for level, counts in enumerate(result.counts, start=1):
        print(f"level {level}: {counts['train']} train, {counts['test']} test  →  folder:{output / f'level-{level}'}")
    extras = "clutter.json, preview.png" if preview else "clutter.json"
    print(f"wrote {output} ({extras}) in {result.seconds:.1f} s")


@app.command("export")
def export_command(
    bundle: Annotated[
        Path, typer.Argument(help="Bundle directory (or a rounds project: its promoted bundle); model.onnx goes in it.")
    ],
    format: Annotated[str, typer.Option("--format", "-f", help="Export format: onnx.")] = "onnx",
    opset: Annotated[int | None, typer.Option(min=7, help="ONNX opset. [default: the exporter's]")] = None,
    tolerance: Annotated[
        float, typer.Option(help="Largest |Δ logit| against PyTorch for the export to be used by graft serve.")
    ] = 1e-4,
    as_json: Annotated[bool, typer.Option("--json", help="Print the export record as JSON on stdout.")] = False,
) -> None:
    """Export the model to ONNX inside the bundle, checked against PyTorch; graft serve then uses ONNX Runtime.

    \b
    Examples:
      graft export runs/x/bundle --format onnx
    """
    from graft.exports import export

    bundle = _bundle_dir(bundle)
    console().print(f"exporting {bundle} to {format} and checking it against PyTorch…", markup=False)
    record = export(bundle, format, opset=opset, tolerance=tolerance)
    if as_json:
        print(json.dumps(record.to_dict(), indent=2))
    verdict = "passed" if record.passed else "FAILED"
    print(
        f"wrote {bundle / record.file} (opset {record.opset}, onnxruntime {record.onnxruntime_version}): "
        f"max |Δ logit| vs PyTorch {record.max_abs_logit_delta:.2e}, parity {verdict} (≤ {record.tolerance:g})",
        file=sys.stderr if as_json else sys.stdout,
    )
    if not record.passed:
        raise GraftError(
            f"the ONNX export differs from PyTorch by {record.max_abs_logit_delta:.2e} > {record.tolerance:g}; "
            "graft serve will keep using PyTorch for this bundle"
        )


@app.command("serve")
def serve_command(
    bundle: Annotated[
        Path, typer.Argument(help="Bundle directory to serve, or a rounds project (its promoted bundle, followed).")
    ],
    host: Annotated[
        str, typer.Option(help="Address to listen on; 0.0.0.0 exposes it to your network (then use --token).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port.")] = 8000,
    engine: Annotated[
        str, typer.Option(help="auto (ONNX Runtime when a checked export exists, else PyTorch), onnx or torch.")
    ] = "auto",
    max_batch: Annotated[int, typer.Option(min=1, help="Images per forward pass; 1 turns batching off.")] = 16,
    max_delay_ms: Annotated[
        float, typer.Option(min=0, help="How long the first request of a batch waits for others (ms).")
    ] = 5.0,
    token: Annotated[
        str | None,
        typer.Option(envvar="GRAFT_TOKEN", help="Require 'Authorization: Bearer TOKEN' for predict, model, reload."),
    ] = None,
    max_upload_mb: Annotated[float, typer.Option(help="Largest upload accepted (413 above).")] = 20.0,
    max_pixels: Annotated[
        int, typer.Option(help="Largest image in pixels, checked before decoding (413 above).")
    ] = 50_000_000,
    max_queue: Annotated[
        int, typer.Option(min=1, help="Predict requests held at once; more get 503 with Retry-After.")
    ] = 64,
    timeout: Annotated[float, typer.Option(help="Seconds a predict request may take (504 after).")] = 30.0,
    threads: Annotated[int | None, typer.Option(min=1, help="Threads for the model. [default: all cores]")] = None,
    decode_threads: Annotated[int, typer.Option(min=1, help="Threads decoding uploads.")] = 2,
    access_log: Annotated[bool, typer.Option("--access-log", help="Log every request.")] = False,
    watch: Annotated[
        float,
        typer.Option(min=0, help="For a rounds project: seconds between checks for a newly promoted round (0: off)."),
    ] = 2.0,
) -> None:
    """Serve a bundle over HTTP: a phone page at /, the API at /v1/predict, docs at /docs.

    \b
    Examples:
      graft serve runs/x/bundle
      graft serve runs/x/bundle --host 0.0.0.0 --token SECRET   # reachable from a phone on your Wi-Fi
      graft serve proj          # a rounds project: serves its current round, switches when a new one is promoted
    \b
    POST /v1/reload or SIGHUP loads the bundle again (e.g. after a new round) without dropping requests.
    """
    from graft.serve.run import serve
    from graft.serve.settings import ServeSettings

    settings = ServeSettings(
        engine=engine,  # type: ignore[arg-type]
        max_batch=max_batch,
        max_delay_ms=max_delay_ms,
        max_queue=max_queue,
        max_upload_mb=max_upload_mb,
        max_pixels=max_pixels,
        timeout_s=timeout,
        token=token,
        threads=threads,
        decode_threads=decode_threads,
        watch_s=watch,
    )
    serve(bundle, host=host, port=port, settings=settings, access_log=access_log)


rounds_app = typer.Typer(
    name="rounds",
    help="Train in rounds: warm-started rounds on growing data, accuracy matrix, forgetting, promotion gate.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(rounds_app)


@rounds_app.command("init")
def rounds_init_command(
    directory: Annotated[Path, typer.Argument(help="Project directory (created).")],
    recipe: Annotated[
        Path | None, typer.Option(help="TOML recipe with training settings for every round; flags override it.")
    ] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Any timm model name. [default: resnet18]")] = None,
    input_mode: Annotated[str | None, typer.Option(help="replicate, stem or fold. [default: replicate]")] = None,
    size: Annotated[int | None, typer.Option("--size", "-s", help="Square input size in pixels. [default: 32]")] = None,
    pretrained: Annotated[str | None, typer.Option(help="Round 1 starts from 'imagenet' timm weights.")] = None,
    weights: Annotated[str | None, typer.Option(help="Round 1 starts from these weights or this bundle.")] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", "-e", help="Epochs per round. [default: 5]")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", "-b", help="[default: 64]")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak LR of each round's schedule. [default: 0.004]")] = None,
    schedule: Annotated[str | None, typer.Option(help="onecycle, cosine or constant. [default: onecycle]")] = None,
    strategy: Annotated[str | None, typer.Option(help="finetune, transfer or freeze-unfreeze.")] = None,
    augment: Annotated[str | None, typer.Option(help="none or reference. [default: none]")] = None,
    precision: Annotated[str | None, typer.Option(help="auto, fp32 or bf16. [default: auto]")] = None,
    seed: Annotated[int | None, typer.Option(help="Seeds splits, training and replay samples. [default: 0]")] = None,
    max_train: Annotated[int | None, typer.Option(help="At most this many training images per round.")] = None,
    data_root: Annotated[str | None, typer.Option(help="Where data sets are looked for.")] = None,
    max_forgetting: Annotated[
        float,
        typer.Option(help="Promotion gate: a round forgetting more than this on earlier rounds is not promoted."),
    ] = 0.05,
    force: Annotated[
        bool, typer.Option("--force", help="Start an existing project again (its old rounds move to DIR/archive/).")
    ] = False,
) -> None:
    """Create a rounds project: the training settings every round uses, and the promotion gate.

    \b
    Examples:
      graft rounds init proj --model resnet18 --input-mode fold --size 32 --epochs 3 --max-forgetting 0.05
      graft rounds add proj level-1 --data folder:clutter/level-1
      graft rounds train proj && graft rounds status proj
    """
    from graft.rounds import init
    from graft.train.config import recipe_settings

    settings = recipe_settings(
        recipe,
        model=model, input_mode=input_mode, size=size, pretrained=pretrained, weights=weights,
        epochs=epochs, batch_size=batch_size, lr=lr, schedule=schedule, strategy=strategy,
        augment=augment, precision=precision, seed=seed, max_train=max_train, data_root=data_root,
    )  # fmt: skip
    init(directory, max_forgetting=max_forgetting, force=force, **settings)
    print(f"rounds project: {directory} (gate: forgetting ≤ {max_forgetting:.2%}); add rounds with `graft rounds add`")


# A round's own training settings, shared by `rounds add` and `rounds redo`.
RoundRecipe = Annotated[Path | None, typer.Option(help="TOML recipe with this round's own training settings.")]
RoundEpochs = Annotated[int | None, typer.Option("--epochs", "-e", help="This round's epochs. [default: project's]")]
RoundLr = Annotated[float | None, typer.Option(help="This round's peak LR. [default: project's]")]
RoundSchedule = Annotated[str | None, typer.Option(help="This round's schedule: onecycle, cosine or constant.")]
RoundStrategy = Annotated[str | None, typer.Option(help="This round's strategy: finetune, transfer, freeze-unfreeze.")]
RoundAugment = Annotated[str | None, typer.Option(help="This round's augmentation: none or reference.")]


@rounds_app.command("add")
def rounds_add_command(
    directory: Annotated[Path, typer.Argument(help="Rounds project directory.")],
    name: Annotated[str, typer.Argument(help="Round name, e.g. level-2.")],
    data: Annotated[str, typer.Option("--data", "-d", help="The round's data: digits, mnist, folder:PATH, …")],
    replay: Annotated[
        float | None,
        typer.Option(help="Train on this round plus this fraction of each earlier round (seeded sample)."),
    ] = None,
    naive: Annotated[bool, typer.Option("--naive", help="Train on this round only (for comparison).")] = False,
    recipe: RoundRecipe = None,
    epochs: RoundEpochs = None,
    lr: RoundLr = None,
    schedule: RoundSchedule = None,
    strategy: RoundStrategy = None,
    augment: RoundAugment = None,
) -> None:
    """Add a round; by default it trains on the union of all rounds so far, with the project's settings."""
    from graft.rounds import add
    from graft.train.config import recipe_settings

    own = recipe_settings(recipe, epochs=epochs, lr=lr, schedule=schedule, strategy=strategy, augment=augment)
    state = add(directory, name, data, replay=replay, naive=naive, settings=own)
    entry = state["rounds"][-1]
    print(f"round {len(state['rounds'])}: {entry['name']} ({entry['mode']}) {entry['data']}")


@rounds_app.command("redo")
def rounds_redo_command(
    directory: Annotated[Path, typer.Argument(help="Rounds project directory.")],
    name: Annotated[str, typer.Argument(help="The round to train again (later rounds are redone too).")],
    union: Annotated[bool, typer.Option("--union", help="Train it on the union of all rounds so far.")] = False,
    replay: Annotated[
        float | None, typer.Option(help="Train it on itself plus this fraction of each earlier round.")
    ] = None,
    naive: Annotated[bool, typer.Option("--naive", help="Train it on itself only.")] = False,
    recipe: RoundRecipe = None,
    epochs: RoundEpochs = None,
    lr: RoundLr = None,
    schedule: RoundSchedule = None,
    strategy: RoundStrategy = None,
    augment: RoundAugment = None,
) -> None:
    """Put a round and every later one back to pending, to train them again (a rejected round with replay).

    \b
    Their folders move to DIR/archive/<time>/; current falls back to the newest promoted earlier round.
    Example:
      graft rounds redo proj level-4 --replay 0.3 --epochs 3 && graft rounds train proj
    """
    from graft.rounds.project import redo
    from graft.train.config import recipe_settings

    if union + naive + (replay is not None) > 1:
        raise GraftError("--union, --replay and --naive exclude each other")
    mode = "union" if union else "naive" if naive else "replay" if replay is not None else None
    own = recipe_settings(recipe, epochs=epochs, lr=lr, schedule=schedule, strategy=strategy, augment=augment)
    state, archive = redo(directory, name, mode=mode, replay=replay, settings=own)  # type: ignore[arg-type]
    pending = [r["name"] for r in state["rounds"] if r["status"] == "pending"]
    print(f"pending again: {', '.join(pending)}" + (f"; earlier results moved to {archive}" if archive else ""))
    print(f"train them with `graft rounds train {directory}`")


@rounds_app.command("train")
def rounds_train_command(
    directory: Annotated[Path, typer.Argument(help="Rounds project directory.")],
    max_forgetting: Annotated[float | None, typer.Option(help="Gate for this call instead of the project's.")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads. [default: all cores]")] = None,
    workers: Annotated[int | None, typer.Option(help="Decoding processes for folder data.")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda or cuda:N.")] = None,
) -> None:
    """Train every pending round in order (an interrupted one is resumed), measure, gate, report.

    Writes DIR/report.json and DIR/matrix.png; DIR/current.json names the promoted bundle.
    """
    from graft.rounds.run import status_lines, train

    summary = train(directory, max_forgetting=max_forgetting, threads=threads, workers=workers, device=device)
    print("\n".join(status_lines(summary)))


@rounds_app.command("status")
def rounds_status_command(
    directory: Annotated[Path, typer.Argument(help="Rounds project directory.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The rounds and their state, the accuracy matrix and metrics, and which bundle is current and why."""
    from graft.rounds.run import status, status_lines

    summary = status(directory)
    print(json.dumps(summary, indent=2) if as_json else "\n".join(status_lines(summary)))


def _describe(meta: dict) -> list[str]:
    """`graft info` as aligned lines: what the model is, what it eats, what it knows, how it was made."""
    from graft.data.memory import describe

    arch, spec, metrics = meta["architecture"], meta["input"], meta.get("metrics", {})
    classes = meta["classes"]
    shown = ", ".join(classes[:20]) + (" …" if len(classes) > 20 else "")
    size = f"{spec['size'][0]}×{spec['size'][1]}×{spec['channels']}"
    lines = [
        f"bundle      {meta['path']}",
        f"model       {arch['timm_name']} {arch['timm_kwargs'] or ''} head={arch['head']}  "
        f"{meta['parameters'] / 1e6:.2f} M parameters",
        f"input       {size}  mode={spec['mode']}  resize={spec['resize']} ({spec['interpolation']})  "
        f"mean={list(spec['mean'])} std={list(spec['std'])}",
        f"classes     {len(classes)}: {shown}",
    ]
    if metrics:
        lines.append("metrics     " + "  ".join(f"{k}={_fmt(v)}" for k, v in metrics.items()))
    provenance = meta.get("provenance", {})
    if provenance.get("data"):
        d = provenance["data"]
        source = d.get("source") or (f"in-memory {describe(d['in_memory'])}" if d.get("in_memory") else "?")
        lines.append(
            f"trained on  {source}: {d.get('train')} train / {d.get('valid')} valid, "
            f"seed {provenance.get('seed')}, {provenance.get('epochs')} epochs"
        )
    if provenance.get("keras"):
        k = provenance["keras"]
        lines.append(
            f"imported    {k['source']} ({k['file_kind']}, Keras {k['keras_version'] or '?'}): "
            f"{k['application'] or 'layer graph'}, preprocessing {k['preprocess']}"
        )
    if provenance.get("transfer"):
        t = provenance["transfer"]
        counts = [len(t[k]) for k in ("loaded", "adapted", "skipped", "initialised")]
        lines.append("weights     {}: {} loaded, {} adapted, {} skipped, {} new".format(t["source"], *counts))
    parent = provenance.get("continued_from")
    if parent:
        lines.append(f"continued   from {parent['bundle']}")
        provenance = {**provenance, "surgery": [*parent.get("surgery", []), *provenance.get("surgery", [])]}
    export = meta.get("exports", {}).get("onnx")
    if export:
        lines.append(
            f"export      {export.get('file')} opset {export.get('opset')} (onnxruntime "
            f"{export.get('onnxruntime_version')}, {export.get('created')}): max |Δ logit| "
            f"{export.get('max_abs_logit_delta', float('nan')):.2e} vs PyTorch; {meta.get('export_status', '')}"
        )
    for entry in provenance.get("surgery", []):
        lines.append(f"surgery     {entry.get('at', '')} from {entry.get('parent')}: {entry.get('verdict')}")
        for step in [*entry.get("steps", []), *([entry["overall"]] if entry.get("overall") else [])]:
            lines.append(
                f"              {step['verdict']:<11} {step['operation']}  max |Δlogit| "
                f"{step['max_abs_logit_delta']:.2e}, top-1 agreement {step['top1_agreement']:.2%}"
            )
    return lines


def _fmt(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def main(argv: list[str] | None = None) -> None:
    """Entry point: usage mistakes, GraftError and OS errors (permissions, disk full) → one line on stderr, exit 2."""
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        code = app(args=args or ["--help"], prog_name="graft", standalone_mode=False)
    except typer.Abort:
        console().print("graft: interrupted", markup=False)
        sys.exit(130)
    except typer.TyperException as error:  # unknown command or option, wrong type, missing argument
        _fail(error.format_message() if hasattr(error, "format_message") else str(error))
    except Interrupted as error:  # a checkpoint was written: say how to continue, exit as the signal asks
        console().print(f"graft: {error}", markup=False, soft_wrap=True)
        sys.exit(128 + (error.signum or signal.SIGINT))
    except GraftError as error:
        _fail(str(error))
    except OSError as error:
        where = f": {error.filename}" if error.filename else ""
        _fail(f"{error.strerror or first_line(error)}{where}")
    sys.exit(code if isinstance(code, int) else 0)


def _fail(message: str) -> None:
    console().print(f"[red]graft: error:[/red] {escape(' '.join(message.split()))}", highlight=False, soft_wrap=True)
    sys.exit(2)
