"""`graft import-keras`: a Keras .h5/.keras file into a bundle with the same logits, without TensorFlow."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


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
        typer.Option(
            metavar="<tf|torch|caffe|raw|unit>",
            help="tf, torch, caffe, raw (pixels 0-255) or unit (0-1). [default: the application's]",
        ),
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
    from graft.keras_import import import_keras

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
    keras = bundle.provenance.keras
    what = keras.application or f"layer graph ({len(bundle.architecture.graph['layers'])} layers)"
    print(
        f"imported {file} ({keras.file_kind}, Keras {keras.keras_version or '?'}) as {what}: "
        f"{bundle.architecture.timm_name}, {len(bundle.classes)} classes, input "
        f"{bundle.spec.size[0]}×{bundle.spec.size[1]}×{bundle.spec.channels}, preprocessing {keras.preprocess}"
    )
    for note in keras.notes:
        print(f"  note: {note}")
    print(f"bundle: {output}")
