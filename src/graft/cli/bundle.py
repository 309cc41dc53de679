"""`graft eval`, `graft predict`, `graft info` and `graft schema`: the commands that read a bundle (and never change
it), and the schema of what they read.

Each takes a bundle directory or a rounds project, whose promoted bundle is meant (`_bundle_dir`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from graft.cli.common import _bundle_dir, _pct
from graft.errors import GraftError
from graft.io import json_text
from graft.progress import console

if TYPE_CHECKING:
    from graft.record import BundleRecord


def eval_command(
    bundle: Annotated[Path, typer.Argument(help="Bundle directory, or a rounds project (its promoted bundle).")],
    data: Annotated[
        str | None,
        typer.Option("--data", "-d", help="Data source. [default: the one the bundle was trained on]"),
    ] = None,
    split: Annotated[
        str,
        typer.Option(
            metavar="<test|valid|train|all>",
            help="test, valid, train, or all (every labelled image: for new data such as a folder).",
        ),
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
    recorded = loaded.provenance.data
    source = data or (recorded.source if recorded is not None else None) or "data"
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
        print(json_text({**result.to_dict(), "output": str(out_dir)}))
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
    images: Annotated[
        list[Path],
        typer.Argument(
            help="Image files (JPEG, PNG, WebP, BMP, GIF, TIFF), or folders: their images, sub-folders included "
            "(hidden files ignored).",
            metavar="IMAGES...",
        ),
    ],
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="How many classes to show per image.")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
    skip_bad: Annotated[
        bool,
        typer.Option(
            "--skip-bad",
            help="Go on past files that cannot be read: results for the others, one line per bad one on stderr, "
            "exit 1. On by default when a folder is given; otherwise a bad file stops the command before any output.",
        ),
    ] = False,
    no_limits: Annotated[
        bool,
        typer.Option(
            "--no-limits",
            help="Lift graft's image limits (by default, as in graft serve, images over 50 M pixels or 16384 "
            "pixels on a side are refused from their header; Pillow's own ceiling of ~179 M pixels stays).",
        ),
    ] = False,
) -> None:
    """Top-k classes with probabilities, preprocessed exactly as in training (from the bundle's spec)."""
    from graft.bundle import load
    from graft.data.image_limits import DEFAULT_LIMITS, NO_LIMITS

    files = _image_files(images)
    skip_bad = skip_bad or any(path.is_dir() for path in images)
    loaded = load(_bundle_dir(bundle))
    limits = NO_LIMITS if no_limits else DEFAULT_LIMITS
    inputs, failures = {}, {}
    for path in files:  # every file is decoded before the first output, so a bad one fails the call early
        try:
            inputs[path] = loaded.model_input(path, limits=limits, name=str(path))
        except GraftError as error:
            if not skip_bad:
                raise
            failures[path] = str(error)
    ranked = dict(zip(inputs, loaded.predict_inputs(list(inputs.values()), top_k), strict=True))
    if as_json:
        results = [
            {"image": str(p), **ranked[p].to_dict()} if p in ranked else {"image": str(p), "error": failures[p]}
            for p in files
        ]
        print(json_text(results))
    else:
        for path in files:
            if path in ranked:
                pred = ranked[path]
                shown = ", ".join(f"{c} ({p:.1%})" for c, p in zip(pred.classes, pred.probabilities, strict=True))
                print(f"{path}: {shown}")
            else:
                print(failures[path], file=sys.stderr)
    if failures:
        print(f"{len(failures)} of {len(files)} images could not be read", file=sys.stderr)
        raise typer.Exit(1)


def _image_files(paths: list[Path]) -> list[Path]:
    """The files given, with each folder replaced by its images (the folder listing training uses: by extension,
    sorted, sub-folders included, hidden entries ignored)."""
    from graft.data.folder import image_files
    from graft.data.images import IMAGE_EXTENSIONS

    files: list[Path] = []
    for path in paths:
        if not path.is_dir():
            files.append(path)
            continue
        found = image_files(path, [])
        if not found:
            raise GraftError(f"{path}: no images in this folder (looked for {', '.join(IMAGE_EXTENSIONS)})")
        files += found
    return files


def info_command(
    bundle: Annotated[Path, typer.Argument(help="Bundle directory, or a rounds project (its promoted bundle).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
    layers: Annotated[
        bool, typer.Option("--layers", help="List the model's layers with their output shapes (for surgery).")
    ] = False,
) -> None:
    """Architecture, parameters, input spec, classes, metrics and surgery history of a bundle."""
    from graft.bundle_info import record_info
    from graft.record import read

    bundle = _bundle_dir(bundle)
    if layers:
        from graft.api import layer_table

        for name, kind, shape in layer_table(bundle):
            print(f"{name:<40} {kind:<24} {shape}")
        return
    record = read(bundle) if bundle.is_dir() else None  # (load's own first check names a missing directory)
    # From the record and the weights' header, without torch, where they agree; else load the model, which checks
    # every tensor (a broken bundle is refused as before) and counts the parameters itself.
    meta = record_info(bundle, record) if record is not None else None
    exports = dict(record.exports) if record is not None else {}
    if meta is None or record is None:
        from graft.api import info as bundle_info
        from graft.bundle import load

        loaded = load(bundle, record=record)
        meta = bundle_info(loaded)
        record, exports = loaded.record(), loaded.exports
    if as_json:
        print(json_text(meta))
        return
    print("\n".join(_describe(bundle, record, exports, meta.get("export_statuses", {}))))


def _describe(path: Path, record: BundleRecord, exports: dict, export_statuses: dict[str, str]) -> list[str]:
    """`graft info` as aligned lines: what the model is, what it eats, what it knows, how it was made."""
    from graft.record import export_record

    arch, spec, provenance = record.arch, record.spec, record.provenance
    classes = record.classes
    shown = ", ".join(classes[:20]) + (" …" if len(classes) > 20 else "")
    lines = [
        f"bundle      {path}",
        f"model       {arch.timm_name} {arch.timm_kwargs or ''} head={arch.head}  "
        f"{(record.parameters or 0) / 1e6:.2f} M parameters",
        f"input       {spec.size[0]}×{spec.size[1]}×{spec.channels}  mode={spec.mode}  resize={spec.resize} "
        f"({spec.interpolation})  mean={list(spec.mean)} std={list(spec.std)}",
        f"classes     {len(classes)}: {shown}",
    ]
    if (network := arch.network_size) is not None:
        lines.insert(
            3,
            f"size stem   {spec.size[0]}×{spec.size[1]} → {network[0]}×{network[1]}: a learnable resize in front of "
            "the network (graft surgery --size-mode stem)",
        )
    if record.metrics:
        lines.append("metrics     " + "  ".join(f"{k}={_fmt(v)}" for k, v in record.metrics.items()))
    if (d := provenance.data) is not None:
        source = d.source or (_in_memory(d.in_memory) if d.in_memory else "?")
        lines.append(
            f"trained on  {source}: {d.train} train / {d.valid} valid, "
            f"seed {provenance.seed}, {provenance.epochs} epochs"
        )
    if (k := provenance.keras) is not None:
        lines.append(
            f"imported    {k.source} ({k.file_kind}, Keras {k.keras_version or '?'}): "
            f"{k.application or 'layer graph'}, preprocessing {k.preprocess}"
        )
    if (t := provenance.transfer) is not None:
        counts = [len(t.loaded), len(t.adapted), len(t.skipped), len(t.initialised)]
        lines.append("weights     {}: {} loaded, {} adapted, {} skipped, {} new".format(t.source, *counts))
    surgery = list(provenance.surgery)
    if (parent := provenance.continued_from) is not None:
        lines.append(f"continued   from {parent.bundle}")
        surgery = [*parent.surgery, *surgery]
    for name in exports:
        export, problem = export_record(exports, name)
        if export is None:
            lines.append(f"export      {problem}")
            continue
        status = export_statuses.get(name, "")
        if name == "onnx":
            status = status.replace("not usable:", "not used by graft serve:")
        lines.append(
            f"export      {export.file} opset {export.opset} (onnxruntime {export.onnxruntime_version}, "
            f"{export.created}): max |Δ logit| {export.max_abs_logit_delta:.2e} vs PyTorch; {status}"
        )
        if export.certificate is not None:
            from graft.bundle_info import certificate_summary

            lines.append(f"              certificate {certificate_summary(export.certificate)}")
        elif export.certificate_note:
            lines.append(f"              certificate {export.certificate_note}")
    for entry in surgery:
        lines.append(f"surgery     {entry.at} from {entry.parent}: {entry.verdict}")
        for step in [*entry.steps, *([entry.overall] if entry.overall else [])]:
            lines.extend(_certificate_lines(step))
    return lines


def _in_memory(record: dict) -> str:
    from graft.data.memory import describe  # here: numpy and torch only for bundles trained on arrays

    return f"in-memory {describe(record)}"


def _certificate_lines(step: dict) -> list[str]:
    """One stored certificate; records written before issue 20 lack the probe spread and training checks."""
    lines = [
        f"              {step.get('verdict', '?'):<11} {step.get('operation', '?')}  max |Δlogit| "
        f"{_num(step.get('max_abs_logit_delta'), '.2e')}, top-1 agreement {_num(step.get('top1_agreement'), '.2%')}"
    ]
    indent = " " * 26
    probe = f"{step.get('probe_count', '?')} {step.get('probe', '?')} images"
    counts = step.get("probe_classes")
    if isinstance(counts, dict) and counts:
        total = sum(v for v in counts.values() if isinstance(v, int)) or 1
        largest = max(v for v in counts.values() if isinstance(v, int))
        probe += f"; old top-1 in {len(counts)} classes, largest {largest / total:.0%}"
    else:
        probe += "; class spread not recorded (certificate from before graft recorded it)"
    lines.append(f"{indent}probe {probe}")
    if step.get("train_forward_delta") is not None:
        lines.append(
            f"{indent}train mode max |Δlogit| {_num(step.get('train_forward_delta'), '.2e')}; after one step "
            f"top-1 agreement {_num(step.get('step_top1_agreement'), '.2%')} ({step.get('step_note', '')})"
        )
    elif "train_forward_delta" not in step:
        lines.append(f"{indent}train mode not certified (certificate from before graft checked it)")
    if step.get("old_class_agreement") is not None:
        lines.append(
            f"{indent}old predictions kept on {_num(step.get('old_class_agreement'), '.2%')} of "
            f"{step.get('old_class_images', '?')} old-class images"
        )
    if step.get("new_class_wins"):
        lines.append(f"{indent}new classes take top-1 on {_num(step.get('new_class_wins'), '.1%')} of the probe")
    if isinstance(before := step.get("before_healing"), dict):
        lines.append(
            f"{indent}before healing: {before.get('verdict', '?')}, max |Δlogit| "
            f"{_num(before.get('max_abs_logit_delta'), '.2e')}, "
            f"top-1 agreement {_num(before.get('top1_agreement'), '.2%')}"
        )
    for warning in step.get("warnings") or []:
        lines.append(f"{indent}warning: {warning}")
    return lines


def _num(value: object, form: str) -> str:
    return format(value, form) if isinstance(value, int | float) else "?"


def _fmt(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def schema_command() -> None:
    """The JSON Schema of graft.json (the bundle record), for tools that read bundles (docs/bundle.schema.json)."""
    from graft.record import json_schema

    print(json_text(json_schema()))
