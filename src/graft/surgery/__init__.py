"""Model surgery: change a trained bundle's architecture, channels, size, depth, width and classes, certified.

    import graft
    result = graft.surgery("runs/x/bundle", "bundle-rgb128", channels=3, size=128, insert_after="layer2")
    for certificate in result.certificates:
        print(certificate.line())

Operations run in a fixed order (architecture, channels, size, BatchNorm recalibration, deeper, wider, classes);
each is certified against the model before it, the whole chain against the original, and everything is saved in
the new bundle's provenance.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from graft.bundle import Bundle, load
from graft.data.base import ImageSet
from graft.data.sources import load_everything
from graft.errors import GraftError
from graft.record import Provenance, SurgeryEntry
from graft.spec import InputSpec
from graft.surgery.certificate import Certificate, Views, certify, identity, model_inputs, synthetic_probe
from graft.surgery.channels import change_channels
from graft.surgery.classes import change_classes, resolve_classes
from graft.surgery.resize import change_size, recalibrate_batchnorm
from graft.surgery.structure import insert_identity_block, widen_layer
from graft.surgery.transfer import change_architecture

VERDICTS = ("exact", "approximate", "breaking")
Step = Callable[[Bundle], tuple[Bundle, Views, dict]]


@dataclass
class SurgeryResult:
    """The new bundle (saved when an output was given), one certificate per step, and one for the whole chain
    (original vs final model) when there are several steps."""

    bundle: Bundle
    certificates: list[Certificate]
    overall: Certificate | None = None

    @property
    def verdict(self) -> str:
        """How the final model compares with the original: the whole-chain certificate's verdict.

        A later step can repair an earlier one (BatchNorm recalibration after a size change), so the chain is
        judged end to end, not by its weakest step.
        """
        if self.overall is not None:
            return self.overall.verdict
        return self.certificates[0].verdict


def load_probe(images: ImageSet, count: int, size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """`count` images drawn at random (seeded), as uint8 (N, C, *size), the size of the largest model involved."""
    positions = np.sort(np.random.default_rng(seed).permutation(len(images))[:count])
    return images.batch(positions, InputSpec(size=size, channels=images.channels))


def surgery(
    bundle: Bundle | str | Path,
    output: str | Path | None = None,
    *,
    architecture: str | None = None,
    channels: int | None = None,
    size: int | tuple[int, int] | None = None,
    insert_after: str | list[str] | None = None,
    block: str = "relu",
    widen: dict[str, int] | None = None,
    classes: list[str] | None = None,
    add_classes: list[str] | None = None,
    drop_classes: list[str] | None = None,
    imprint: str | None = None,
    recalibrate: str | None = None,
    probe: str | None = None,
    probe_count: int = 64,
    require: str | None = None,
    data_root: str | None = None,
    download: bool = True,
    overwrite: bool = False,
    seed: int = 0,
    console: Console | None = None,
) -> SurgeryResult:
    """Apply the requested changes to a bundle, certify each, and save the result to `output` (if given).

    `probe`/`imprint`/`recalibrate` name data sources (mnist, digits, folder:PATH…). Without a probe, seeded
    synthetic colour images are used. `require="exact"` (or "approximate") writes nothing unless the chain's
    verdict reaches that level.
    """
    if require not in (None, *VERDICTS[:2]):
        raise GraftError(f"--require takes exact or approximate, not {require!r}")
    if probe_count < 1:
        raise GraftError("the probe needs at least one image")
    current = bundle if isinstance(bundle, Bundle) else load(bundle)
    if current.architecture.graph is not None:
        raise GraftError(
            "surgery works on timm architectures; this bundle is an imported Keras layer graph "
            "(Keras Applications import as timm models and do support it)"
        )
    parent = str(current.path) if current.path else None
    say = console.print if console is not None else (lambda *_a, **_k: None)
    size2 = (size, size) if isinstance(size, int) else tuple(size) if size is not None else None
    new_classes = None
    if classes is not None or add_classes or drop_classes:
        new_classes = resolve_classes(current.classes, classes, add_classes, drop_classes)
    if widen:
        for layer, width in widen.items():
            if width < 1:
                raise GraftError(f"width for {layer} must be positive")
    afters = [insert_after] if isinstance(insert_after, str) else list(insert_after or [])
    # Data sources are read before any work, so a typo fails in a second, not after the first surgery.
    probe_images = load_everything(probe, data_root, download=download) if probe else None
    imprint_images = load_everything(imprint, data_root, download=download) if imprint else None
    recalibration_images = load_everything(recalibrate, data_root, download=download) if recalibrate else None
    largest = max(current.spec.size, size2 or (0, 0))
    probe_tensor = (
        load_probe(probe_images, probe_count, largest, seed)
        if probe_images is not None
        else synthetic_probe(probe_count, largest, seed)
    )
    probe_name = probe or "synthetic"

    steps: list[tuple[str, Step]] = []
    if architecture:
        steps.append((f"architecture → {architecture}", lambda b: change_architecture(b, architecture)))
    if channels is not None:
        steps.append((f"channels {current.spec.channels} → {channels}", lambda b: change_channels(b, channels)))
    if size2 is not None:
        steps.append((f"size → {size2[0]}×{size2[1]}", lambda b: change_size(b, size2)))
    if recalibration_images is not None:
        steps.append(("recalibrate BatchNorm", lambda b: recalibrate_batchnorm(b, recalibration_images, seed=seed)))
    for after in afters:
        steps.append(
            (
                f"deeper: {block} block after {after}",
                lambda b, after=after: insert_identity_block(
                    b, after, model_inputs(probe_tensor, b.spec, identity).float(), block
                ),
            )
        )
    for layer, width in (widen or {}).items():
        steps.append(
            (f"wider: {layer} → {width}", lambda b, layer=layer, width=width: widen_layer(b, layer, width, seed=seed))
        )
    if new_classes is not None:
        steps.append(("classes", lambda b: change_classes(b, new_classes, imprint=imprint_images)))
    if not steps:
        raise GraftError("no change requested: give --channels, --size, --classes, --insert-after, --widen, …")

    original = current
    certificates = []
    chain_views = Views()  # at most one step changes channels; its views are the whole chain's
    for label, operation in steps:
        new, views, details = operation(current)
        certificate = certify(label, current, new, probe_tensor, views=views, probe_name=probe_name, details=details)
        say(certificate.line(), markup=False, highlight=False)
        certificates.append(certificate)
        if views.old is not identity or views.new is not identity:
            chain_views = views
        current = new
    overall = None
    if len(certificates) > 1:
        overall = certify("whole chain", original, current, probe_tensor, views=chain_views, probe_name=probe_name)
        say(overall.line(), markup=False, highlight=False)
    result = SurgeryResult(current, certificates, overall)
    records = [c.to_dict() for c in certificates]
    if require is not None and VERDICTS.index(result.verdict) > VERDICTS.index(require):
        raise GraftError(f"the surgery is {result.verdict}, not {require}; nothing written")
    current.provenance = _provenance(current.provenance, records, overall, parent, result.verdict)
    if (result.verdict != "exact" or new_classes is not None) and current.metrics:
        current.provenance = current.provenance.updated(metrics_before_surgery=current.metrics)
        current.metrics = {}
    if output is not None:
        current.save(output, overwrite=overwrite)
        say(f"wrote {output} ({result.verdict})", markup=False, highlight=False)
    return result


def _provenance(
    previous: Provenance, records: list[dict], overall: Certificate | None, parent: str | None, verdict: str
) -> Provenance:
    entry = SurgeryEntry.model_validate_json(
        json.dumps(
            {
                "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "parent": parent,
                "verdict": verdict,
                "steps": records,
                "overall": overall.to_dict() if overall is not None else None,
            }
        )
    )
    return previous.updated(surgery=[*previous.surgery, entry])


__all__ = ["Certificate", "SurgeryResult", "load_probe", "surgery"]
