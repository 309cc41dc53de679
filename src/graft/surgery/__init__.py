"""Model surgery: change a trained bundle's architecture, channels, size, depth, width and classes, certified.

One call runs a fixed-order chain and saves it:

    import graft
    result = graft.reshape("runs/x/bundle", "bundle-rgb128", channels=3, size=128, insert_after="layer2")
    for certificate in result.certificates:
        print(certificate.line())

The single operations are public and chainable, in any order (graft.surgery.operations): `transplant`
(architecture), `rechannel`, `resize_input`, `recalibrate` (BatchNorm), `deepen`, `widen`, `reclass`, `heal`
(distil the chain's original back into it). Each returns a `Step`, certified against its input on the chain's
`Probe` (`heal` against the original, with the agreement before healing beside it):

    from graft.surgery import deepen, rechannel
    step = rechannel(bundle, 3).then(deepen, "layer3")
    step.certificates, step.overall, step.verdict
    step.save("bundle-rgb")

`reshape()` (also `graft.reshape`; what `graft surgery` runs) builds such a chain in a fixed order (architecture,
channels, size, BatchNorm recalibration, deeper, wider, classes, healing): each step is certified against the model
before it, the whole chain against the original, and everything is saved in the new bundle's provenance.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from graft.bundle import Bundle, load
from graft.data.sources import load_everything
from graft.errors import GraftError
from graft.surgery import operations as ops
from graft.surgery.certificate import Certificate
from graft.surgery.classes import resolve_classes
from graft.surgery.details import (
    ChannelsDetails,
    DeepenDetails,
    Details,
    HealDetails,
    RecalibrationDetails,
    ReclassDetails,
    ResizeDetails,
    TransplantDetails,
    WidenDetails,
)
from graft.surgery.heal import BATCH_SIZE, LR, STEPS, TEMPERATURE, check_heal_options
from graft.surgery.operations import (
    SIZE_MODES,
    VERDICTS,
    Probe,
    Step,
    check_output,
    check_required,
    check_timm,
    deepen,
    default_probe,
    draw_probe,
    heal,
    load_probe,
    recalibrate,
    rechannel,
    reclass,
    resize_input,
    transplant,
    widen,
)


@dataclass
class SurgeryResult:
    """The new bundle (saved when an output was given), one certificate per step, and one for the whole chain
    (original vs final model) when there are several steps."""

    bundle: Bundle
    certificates: list[Certificate]
    overall: Certificate | None = None

    @property
    def verdict(self) -> str:
        """How the final model compares with the original: the whole-chain certificate's verdict (`require` also
        checks every step's).

        A later step can repair an earlier one (BatchNorm recalibration after a size change), so the chain is
        judged end to end, not by its weakest step.
        """
        if self.overall is not None:
            return self.overall.verdict
        return self.certificates[0].verdict


def reshape(
    bundle: Bundle | str | Path,
    output: str | Path | None = None,
    *,
    architecture: str | None = None,
    channels: int | None = None,
    size: int | tuple[int, int] | None = None,
    size_mode: str = "stem",
    insert_after: str | list[str] | None = None,
    block: str | None = None,
    widen: dict[str, int] | None = None,
    classes: list[str] | None = None,
    add_classes: list[str] | None = None,
    drop_classes: list[str] | None = None,
    imprint: str | None = None,
    recalibrate: str | None = None,
    heal: str | None = None,
    heal_steps: int = STEPS,
    heal_temperature: float = TEMPERATURE,
    heal_lr: float = LR,
    heal_batch: int = BATCH_SIZE,
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

    `probe`/`imprint`/`recalibrate` name data sources (mnist, digits, folder:PATH…). Without a probe, the bundle's
    own data is used when it can be read here, else seeded synthetic colour images. `require="exact"` (or
    "approximate") writes nothing unless every step and the whole chain reach that level. `size_mode` is how
    `size` is reached: "stem" (the default: a learnable size stem resizes the image exactly as the bundle's
    preprocessing would: exact; see graft.surgery.resize) or "resample" (the same weights see the image at another
    scale: approximate).

    `heal` (a data source; labels unused) ends the chain by distilling the original into the new model
    (`heal_steps` batches of `heal_batch`, AdamW at `heal_lr`, logits softened by `heal_temperature`, seeded by
    `seed`); its certificate shows the agreement with the original before and after.
    """
    check_required(None, require)
    if size_mode not in ops.SIZE_MODES:
        raise GraftError(f"--size-mode takes {' or '.join(ops.SIZE_MODES)}, not {size_mode!r}")
    if probe_count < 1:
        raise GraftError("the probe needs at least one image")
    current = bundle if isinstance(bundle, Bundle) else load(bundle)
    check_timm(current)
    if output is not None:
        check_output(current, output, overwrite)  # before any work, not after it
    say = console.print if console is not None else (lambda *_a, **_k: None)
    size2 = (size, size) if isinstance(size, int) else tuple(size) if size is not None else None
    new_classes = None
    if classes is not None or add_classes or drop_classes:
        new_classes = resolve_classes(current.classes, classes, add_classes, drop_classes)
    if widen:
        for layer, width in widen.items():
            if width < 1:
                raise GraftError(f"width for {layer} must be positive")
    if heal is not None:
        check_heal_options(heal_steps, heal_temperature, heal_lr, heal_batch)
    afters = [insert_after] if isinstance(insert_after, str) else list(insert_after or [])
    # Data sources are read before any work, so a typo fails in a second, not after the first surgery.
    probe_images = load_everything(probe, data_root, download=download) if probe else None
    imprint_images = load_everything(imprint, data_root, download=download) if imprint else None
    recalibration_images = load_everything(recalibrate, data_root, download=download) if recalibrate else None
    heal_images = load_everything(heal, data_root, download=download) if heal else None
    largest = max(current.spec.size, size2 or (0, 0))
    chain_probe = (
        draw_probe(probe_images, probe_count, largest, seed, probe)
        if probe is not None and probe_images is not None
        else default_probe(current, largest, probe_count, seed, data_root=data_root)
    )

    # (operation, arguments): the fixed order; the first operation starts the chain on the probe.
    plan: list[tuple[Any, tuple, dict]] = []
    if architecture:
        plan.append((ops.transplant, (architecture,), {}))
    if channels is not None:
        plan.append((ops.rechannel, (channels,), {}))
    if size2 is not None:
        plan.append((ops.resize_input, (size2,), {"mode": size_mode}))
    if recalibration_images is not None:
        plan.append((ops.recalibrate, (recalibration_images,), {"seed": seed}))
    for after in afters:
        plan.append((ops.deepen, (after,), {"block": block, "seed": seed}))
    for layer, width in (widen or {}).items():
        plan.append((ops.widen, (layer, width), {"seed": seed}))
    if new_classes is not None:
        plan.append((ops.reclass, (new_classes,), {"imprint": imprint_images}))
    if not plan:
        hint = " (--heal heals a change; it is not one)" if heal_images is not None else ""
        raise GraftError(f"no change requested: give --channels, --size, --classes, --insert-after, --widen, …{hint}")
    if heal_images is not None:  # last: it learns the whole chain's function back, after every other change
        settings = {"steps": heal_steps, "temperature": heal_temperature, "lr": heal_lr, "batch_size": heal_batch}
        plan.append((ops.heal, (heal_images,), {**settings, "seed": seed, "console": console}))

    step: Step[Any] | None = None
    for operation, args, kwargs in plan:
        if step is None:
            step = operation(current, *args, probe=chain_probe, **kwargs)
        else:
            if operation is ops.heal and step.overall is not None:
                say(step.overall.line(), markup=False, highlight=False)  # the chain before healing, as it was
            step = step.then(operation, *args, **kwargs)
        say(step.certificate.line(), markup=False, highlight=False)
    assert step is not None
    if step.overall is not None and not step.healed:  # after healing, the heal step's certificate is that line
        say(step.overall.line(), markup=False, highlight=False)
    check_required(step.weakest, require)
    final = step.finished()
    result = SurgeryResult(final, list(step.certificates), step.overall)
    if output is not None:
        final.save(output, overwrite=overwrite)
        say(f"wrote {output} ({result.verdict})", markup=False, highlight=False)
    return result


__all__ = [
    "SIZE_MODES",
    "VERDICTS",
    "Certificate",
    "ChannelsDetails",
    "DeepenDetails",
    "Details",
    "HealDetails",
    "Probe",
    "RecalibrationDetails",
    "ReclassDetails",
    "ResizeDetails",
    "Step",
    "SurgeryResult",
    "TransplantDetails",
    "WidenDetails",
    "deepen",
    "heal",
    "load_probe",
    "recalibrate",
    "rechannel",
    "reclass",
    "reshape",
    "resize_input",
    "transplant",
    "widen",
]
