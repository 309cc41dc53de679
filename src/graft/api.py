"""Python API for the operations that read a bundle: load (a bundle or a rounds project), evaluate and info.

`load` resolves a path exactly as every command does (`graft.rounds.project.resolve_bundle`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from rich.console import Console

from graft import bundle as _bundle_module
from graft.bundle import Bundle
from graft.data.sources import load_everything, load_splits
from graft.errors import GraftError
from graft.evaluation import EvalResult, class_map, evaluate_model, write_eval_outputs
from graft.record import DEFAULT_VALID_FRACTION
from graft.rounds.project import resolve_bundle

Split = Literal["test", "valid", "train", "all"]


def load(path: str | Path) -> Bundle:
    """A bundle directory, or the promoted bundle of a rounds project (as `graft predict PROJECT` uses)."""
    return _bundle_module.load(resolve_bundle(path).bundle)


def _bundle(bundle: Bundle | str | Path) -> Bundle:
    return bundle if isinstance(bundle, Bundle) else load(bundle)


def evaluate(
    bundle: Bundle | str | Path,
    data: str | None = None,
    *,
    split: Split = "test",
    data_root: str | Path | None = None,
    output: str | Path | None = None,
    batch_size: int = 256,
    download: bool = True,
    console: Console | None = None,
) -> EvalResult:
    """Evaluate a bundle on a split of a data source (default: the source it was trained on, test split).

    With `output`, writes eval.json, confusion.png and misclassified.png there. The valid split is the one the
    bundle was trained with (same fraction and seed, from its provenance); `all` is every labelled image of the
    source, for data the model has never seen.
    """
    bundle = _bundle(bundle)
    recorded = bundle.provenance.data
    data = data or (recorded.source if recorded is not None else None)
    if not data and recorded is not None and recorded.in_memory:
        from graft.data.memory import describe

        raise GraftError(f"this bundle trained on in-memory {describe(recorded.in_memory)}; pass --data")
    if not data:
        raise GraftError("this bundle does not record its data source; pass --data")
    root = data_root or (recorded.data_root if recorded is not None else None)
    if split == "all":
        images = load_everything(data, root, download=download)
    else:
        splits = load_splits(
            data,
            root,
            valid_fraction=recorded.valid_fraction if recorded is not None else DEFAULT_VALID_FRACTION,
            seed=recorded.split_seed if recorded is not None else 0,
            download=download,
            group_by=recorded.group_by if recorded is not None else "none",
        )
        images = getattr(splits, split)
    mapping = class_map(images.classes, bundle.classes)
    result = evaluate_model(
        bundle.model,
        bundle.spec,
        images,
        classes=bundle.classes,
        label_map=mapping,
        batch_size=batch_size,
        console=console,
    )
    if output is not None:
        write_eval_outputs(result, images, output, title=f"{data} {split}")
    return result


def info(bundle: Bundle | str | Path) -> dict:
    """What a bundle is: architecture, parameter count, input spec, classes, metrics, provenance, exports."""
    bundle = _bundle(bundle)
    meta = bundle.metadata()
    meta["path"] = str(bundle.path) if bundle.path else None
    if bundle.path is not None:
        from graft.bundle_info import add_export_statuses

        add_export_statuses(meta, Path(bundle.path), bundle.exports)
    elif not meta["exports"]:
        del meta["exports"]
    return meta


def layer_table(bundle: Bundle | str | Path) -> list[tuple[str, str, str]]:
    """(name, type, output shape) of every layer that runs, in order: the names surgery takes."""
    import torch

    bundle = _bundle(bundle)
    rows: list[tuple[str, str, str]] = []
    handles = []
    for name, module in bundle.model.named_modules():
        if not name:
            continue

        def record(_module, _inputs, output, name=name, kind=type(module).__name__):
            shape = tuple(output.shape[1:]) if isinstance(output, torch.Tensor) else "—"
            rows.append((name.removeprefix("backbone."), kind, str(shape)))

        handles.append(module.register_forward_hook(record))
    try:
        with torch.no_grad():
            bundle.model.eval()(torch.zeros(1, bundle.spec.channels, *bundle.spec.size))
    finally:
        for handle in handles:
            handle.remove()
    return rows
