"""`graft eval`, `graft predict` and `graft info`: the commands that read a bundle (and never change it).

Each takes a bundle directory or a rounds project, whose promoted bundle is meant (`_bundle_dir`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from graft.cli.common import _bundle_dir, _pct
from graft.errors import GraftError
from graft.progress import console


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


def predict_command(
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


def info_command(
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


def _describe(meta: dict) -> list[str]:
    """`graft info` as aligned lines: what the model is, what it eats, what it knows, how it was made."""
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
        lines.append(
            f"trained on  {d.get('source')}: {d.get('train')} train / {d.get('valid')} valid, "
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
