"""Surgery's single operations, public and chainable, each certified against its input.

    from graft.surgery import deepen, rechannel
    step = rechannel(bundle, 3).then(deepen, "layer3")
    step.certificate        # the last step vs its input
    step.certificates       # every step so far
    step.overall            # the final model vs the original (a chain of two or more steps)
    step.save("bundle-rgb") # with the same provenance record `graft.surgery` writes

Operations take a Bundle (or a bundle's path) to start a chain, or a previous `Step` to continue one. A chain
keeps its first probe throughout, so every certificate, and the whole-chain one, measures the same images.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar

import numpy as np
import torch
from rich.console import Console

from graft.bundle import Bundle, load
from graft.data.base import ImageSet
from graft.data.sources import load_everything
from graft.errors import GraftError
from graft.record import Provenance, SurgeryEntry
from graft.spec import InputSpec
from graft.surgery.certificate import (
    Certificate,
    Views,
    certify,
    healing_summary,
    identity,
    model_inputs,
    synthetic_probe,
)
from graft.surgery.channels import change_channels
from graft.surgery.classes import change_classes, resolve_classes
from graft.surgery.details import (
    ChannelsDetails,
    DeepenDetails,
    HealDetails,
    RecalibrationDetails,
    ReclassDetails,
    ResizeDetails,
    TransplantDetails,
    WidenDetails,
)
from graft.surgery.heal import BATCH_SIZE, LR, STEPS, TEMPERATURE, check_heal_options, distil
from graft.surgery.resize import add_size_stem, change_size, preprocessing_gap, recalibrate_batchnorm
from graft.surgery.structure import insert_identity_block, widen_layer
from graft.surgery.transfer import change_architecture

VERDICTS = ("exact", "approximate", "unverified", "breaking")  # best to worst
SIZE_MODES = ("stem", "resample")  # how resize_input changes the input size (graft.surgery.resize)
PROBE_COUNT = 64

D = TypeVar("D")
E = TypeVar("E")
P = ParamSpec("P")


def load_probe(images: ImageSet, count: int, size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """`count` images drawn at random (seeded), as uint8 (N, C, *size), the size of the largest model involved."""
    return draw_probe(images, count, size, seed).images


def draw_probe(images: ImageSet, count: int, size: tuple[int, int], seed: int = 0, name: str | None = None) -> Probe:
    """A labelled probe: `count` images of `images` drawn at random (seeded), at `size`, with their class names."""
    positions = np.sort(np.random.default_rng(seed).permutation(len(images))[:count])
    labels = tuple(images.classes[int(k)] for k in images.labels[positions])
    return Probe(images.batch(positions, InputSpec(size=size, channels=images.channels)), name or images.name, labels)


def default_probe(
    bundle: Bundle, size: tuple[int, int], count: int = 64, seed: int = 0, *, data_root: str | None = None
) -> Probe:
    """The bundle's own data when it can be read here without a download (its provenance names the source),
    else seeded synthetic images, which a trained model often puts nearly all in one class (the certificate
    then says so)."""
    record = bundle.provenance.data
    source = record.source if record is not None else None
    if source:
        try:
            images = load_everything(source, data_root or record.data_root, download=False)
        except (GraftError, OSError, ValueError):
            images = None
        if images is not None and len(images):
            return draw_probe(images, count, size, seed, f"{source} (the bundle's data)")
        return Probe(synthetic_probe(count, size, seed), f"synthetic (the bundle's data {source} is not readable here)")
    return Probe(synthetic_probe(count, size, seed), "synthetic")


@dataclass(frozen=True, eq=False)
class Probe:
    """The images every certificate of a chain is measured on (uint8, N×C×H×W), and the name certificates show.

    Make it at the largest input size the chain reaches: each model sees it resized to its own size, and
    downsampling loses less than upsampling.
    """

    images: torch.Tensor
    name: str = "given"
    labels: tuple[str, ...] | None = None  # class names, one per image, when the probe is labelled data

    def __post_init__(self) -> None:
        shape = tuple(self.images.shape)
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or not shape[0]:
            raise GraftError(f"a probe is uint8 images (N, C, H, W) with N ≥ 1, not {self.images.dtype} {shape}")
        if self.labels is not None and len(self.labels) != shape[0]:
            raise GraftError(f"a probe of {shape[0]} images needs as many labels, not {len(self.labels)}")

    @classmethod
    def synthetic(cls, size: tuple[int, int], count: int = PROBE_COUNT, seed: int = 0) -> Probe:
        """Seeded smooth colour images, for when no real data is at hand."""
        return cls(synthetic_probe(count, size, seed), "synthetic")

    @classmethod
    def load(
        cls,
        source: str,
        size: tuple[int, int],
        count: int = PROBE_COUNT,
        seed: int = 0,
        *,
        data_root: str | None = None,
        download: bool = True,
    ) -> Probe:
        """`count` images of a data source (mnist, digits, folder:PATH…), drawn at random (seeded), labelled."""
        return draw_probe(load_everything(source, data_root, download=download), count, size, seed, source)


ProbeLike = Probe | torch.Tensor | str | None  # None: the bundle's data, else synthetic; str: a data source


@dataclass(frozen=True, eq=False)
class Step(Generic[D]):
    """A bundle after one or more operations, with their certificates; `then` applies the next operation.

    `bundle` is unsaved and its provenance not yet extended: `save` (or `finished`) adds the surgery record.
    """

    bundle: Bundle
    certificate: Certificate  # this step vs its input
    details: D  # this step's report, also in `certificate.details` (the same dict)
    certificates: tuple[Certificate, ...]  # every step so far, in order
    original: Bundle  # the chain's first input, which `overall` compares against
    probe: Probe
    views: Views  # what the whole-chain comparison shows each model: the channel step's views, if any
    reclassed: bool = False  # the class list changed somewhere in the chain: metrics no longer hold
    resized: bool = False  # the input size changed: the data reach the model through another resize
    healed: bool = False  # this step healed: its certificate already compares the original with this bundle

    def then(
        self, operation: Callable[Concatenate[Step[Any], P], Step[E]], *args: P.args, **kwargs: P.kwargs
    ) -> Step[E]:
        """`operation(self, *args, **kwargs)`: the next operation, on the same probe, certificates accumulated."""
        return operation(self, *args, **kwargs)

    @cached_property
    def overall(self) -> Certificate | None:
        """The final model vs the original on the chain's probe (None for a single step); computed on first use.

        A later step can repair an earlier one (BatchNorm recalibration after a size change), so a chain is
        judged end to end, not by its weakest step.
        """
        if len(self.certificates) < 2:
            return None
        if self.healed:  # the heal step measured exactly this: the original vs this bundle, on this probe
            return dataclasses.replace(self.certificate, operation="whole chain")
        return certify(
            "whole chain",
            self.original,
            self.bundle,
            self.probe.images,
            views=self.views,
            probe_name=self.probe.name,
            labels=self.probe.labels,
        )

    @property
    def verdict(self) -> str:
        """exact | approximate | unverified | breaking: the whole chain's verdict, or the single step's."""
        overall = self.overall
        return overall.verdict if overall is not None else self.certificate.verdict

    @property
    def weakest(self) -> str:
        """The worst verdict of any step and of the whole chain: what `require` checks.

        A heal step compares the original with the healed model, so it stands for every step before it: healing is
        how a breaking step is repaired, and judging the repaired chain by the broken step would refuse it forever.
        """
        healed = [i for i, c in enumerate(self.certificates) if c.before_healing is not None]
        counted = self.certificates[healed[-1] :] if healed else self.certificates
        verdicts = [c.verdict for c in counted] + ([self.overall.verdict] if self.overall else [])
        return max(verdicts, key=VERDICTS.index)

    def finished(self) -> Bundle:
        """The bundle with this chain's surgery record appended to its provenance (the original is untouched).

        Metrics move to `metrics_before_surgery` (and the calibrated confidence threshold is dropped) unless the
        chain is exact and kept the class list and the input size, since they describe another model (after an
        exact size stem, test images reach the network through two resizes instead of one).
        """
        overall = self.overall
        provenance = surgery_record(
            self.bundle.provenance,
            [c.to_dict() for c in self.certificates],
            overall,
            str(Path(self.original.path).resolve()) if self.original.path else None,
            self.verdict,
        )
        metrics, confidence = self.bundle.metrics, self.bundle.confidence
        if self.verdict != "exact" or self.reclassed or self.resized:
            confidence = None  # calibrated on another model's probabilities: the default applies until retrained
            if metrics:
                provenance = provenance.updated(metrics_before_surgery=metrics)
                metrics = {}
        return dataclasses.replace(self.bundle, provenance=provenance, metrics=metrics, confidence=confidence)

    def save(self, path: str | Path, *, overwrite: bool = False, require: str | None = None) -> Bundle:
        """Write the finished bundle to `path` and return it; `require="exact"` writes nothing unless every step
        and the whole chain are exact."""
        check_output(self.original, path, overwrite)
        check_required(self.weakest, require)
        bundle = self.finished()
        bundle.save(path, overwrite=overwrite)
        return bundle

    def __repr__(self) -> str:
        """The operations and their verdicts (a dataclass repr would print whole models; no chain certification)."""
        return f"Step({'; '.join(f'{c.operation}: {c.verdict}' for c in self.certificates)})"


def check_required(verdict: str | None, require: str | None) -> None:
    """A GraftError when `require` is not a verdict level, or when `verdict` falls short of it."""
    if require not in (None, *VERDICTS[:2]):
        raise GraftError(f"--require takes exact or approximate, not {require!r}")
    if require is not None and verdict is not None and VERDICTS.index(verdict) > VERDICTS.index(require):
        raise GraftError(f"a step of the surgery is {verdict}, not {require}; nothing written")


def check_output(source: Bundle, output: str | Path, overwrite: bool) -> None:
    """Before any work: the source is never overwritten (nor a folder holding it), and an existing output needs
    `overwrite`."""
    target = Path(output).resolve()
    if source.path is not None:
        origin = Path(source.path).resolve()
        if target == origin or origin.is_relative_to(target):
            raise GraftError(f"{output} is the bundle being changed (or holds it); surgery never modifies its source")
    if target.exists() and not overwrite:
        raise GraftError(f"{output} already exists; choose another output or pass --force")


def surgery_record(
    previous: Provenance, records: list[dict], overall: Certificate | None, parent: str | None, verdict: str
) -> Provenance:
    """`previous` with one more entry in its `surgery` list (validated through JSON, as graft.json will hold it)."""
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


Source = Bundle | Step[Any] | str | Path


def _input(source: Source) -> tuple[Bundle, Step[Any] | None]:
    """The bundle to operate on, and the step it comes from when continuing a chain."""
    if isinstance(source, Step):
        return source.bundle, source
    bundle = source if isinstance(source, Bundle) else load(source)
    check_timm(bundle)
    return bundle, None


def check_timm(bundle: Bundle) -> None:
    """Surgery edits timm models by module name; an imported Keras layer graph has none of those names."""
    if bundle.architecture.graph is not None:
        raise GraftError(
            "surgery works on timm architectures; this bundle is an imported Keras layer graph "
            "(Keras Applications import as timm models and do support it)"
        )


def _probe(bundle: Bundle, previous: Step[Any] | None, probe: ProbeLike, size: tuple[int, int] | None = None) -> Probe:
    """The chain's probe: the previous step's, or a new one at the larger of the model's and the target size."""
    if previous is not None:
        if probe is not None and probe is not previous.probe:
            raise GraftError("a chain keeps the probe of its first operation; give probe= to that one only")
        return previous.probe
    largest = max(tuple(bundle.spec.size), size or (0, 0))
    if probe is None:
        return default_probe(bundle, largest)
    if isinstance(probe, str):
        return Probe.load(probe, largest)
    return probe if isinstance(probe, Probe) else Probe(probe)


def _step(
    label: str,
    bundle: Bundle,
    previous: Step[Any] | None,
    probe: Probe,
    done: tuple[Bundle, Views, D],
    *,
    reclassed: bool = False,
    resized: bool = False,
) -> Step[D]:
    """Certify one operation's output against its input and add it to the chain."""
    new, views, details = done
    certificate = certify(
        label, bundle, new, probe.images, views=views, probe_name=probe.name, details=details, labels=probe.labels
    )
    chain_views = _chain_views(previous.views if previous is not None else None, views)
    if previous is None:
        return Step(new, certificate, details, (certificate,), bundle, probe, chain_views, reclassed, resized)
    certificates = (*previous.certificates, certificate)
    reclassed = reclassed or previous.reclassed
    resized = resized or previous.resized
    return Step(new, certificate, details, certificates, previous.original, probe, chain_views, reclassed, resized)


def _chain_views(previous: Views | None, views: Views) -> Views:
    """What the whole-chain certificate shows each model: at most one step changes channels, and its views are the
    chain's (other steps show both models the same); a size stem anywhere makes the original see the final
    model's input resized in float."""
    base = previous or Views()
    channel = views if views.old is not identity or views.new is not identity else base
    through = base.through_new_input or views.through_new_input
    notes = [channel.note] if channel.old is not identity or channel.new is not identity else []
    if through:
        notes.append(next(v.note for v in (views, base) if v.through_new_input))
    note = "; ".join(notes) or Views().note
    return Views(channel.old, channel.new, note, through)


def _images(images: ImageSet | str) -> ImageSet:
    return load_everything(images) if isinstance(images, str) else images


def transplant(
    source: Source, architecture: str, *, timm_kwargs: dict | None = None, probe: ProbeLike = None
) -> Step[TransplantDetails]:
    """Move the weights into another timm architecture by name and shape: a start for fine-tuning, not the same
    function, and certified as such."""
    bundle, previous = _input(source)
    probe_ = _probe(bundle, previous, probe)
    done = change_architecture(bundle, architecture, timm_kwargs)
    return _step(f"architecture → {architecture}", bundle, previous, probe_, done)


def rechannel(source: Source, channels: int, *, probe: ProbeLike = None) -> Step[ChannelsDetails]:
    """Make the model take `channels` input channels; 1→3 is exact (colour seen as its luminance), 3→1 and 1→k
    exact on gray images, 3→k approximate (see graft.surgery.channels)."""
    bundle, previous = _input(source)
    probe_ = _probe(bundle, previous, probe)
    return _step(
        f"channels {bundle.spec.channels} → {channels}", bundle, previous, probe_, change_channels(bundle, channels)
    )


def resize_input(
    source: Source, size: int | tuple[int, int], *, mode: str = "stem", probe: ProbeLike = None
) -> Step[ResizeDetails]:
    """Make the model take `size` (or height×width) images.

    mode="stem" (the default): exact; a learnable size stem in front of the network resizes the new images exactly
    as the bundle's preprocessing resizes them to the old size, so the new model on a new-size image is the old
    model on it resized (graft.surgery.resize). mode="resample": the same weights see the image at another scale,
    keeping every weight that allows it; approximate (`recalibrate` after it often helps).
    """
    if mode not in SIZE_MODES:
        raise GraftError(f"size mode {mode!r} is not one of {', '.join(SIZE_MODES)}")
    size2 = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    bundle, previous = _input(source)
    probe_ = _probe(bundle, previous, probe, size2)
    if mode == "resample":
        done = change_size(bundle, size2)
        return _step(f"size → {size2[0]}×{size2[1]}", bundle, previous, probe_, done, resized=True)
    new, views, details = add_size_stem(bundle, size2)
    details["preprocessing_delta_levels"] = preprocessing_gap(probe_.images, bundle.spec, new.spec)
    label = f"size → {size2[0]}×{size2[1]} (size stem)"
    return _step(label, bundle, previous, probe_, (new, views, details), resized=True)


def recalibrate(
    source: Source, images: ImageSet | str, *, count: int = 2048, seed: int = 0, probe: ProbeLike = None
) -> Step[RecalibrationDetails]:
    """Re-estimate BatchNorm statistics on unlabelled `images` (an ImageSet or a data source name), changing no
    learned weight: the cheap repair after a change of size or channels."""
    bundle, previous = _input(source)
    probe_ = _probe(bundle, previous, probe)
    done = recalibrate_batchnorm(bundle, _images(images), count=count, seed=seed)
    return _step("recalibrate BatchNorm", bundle, previous, probe_, done)


def deepen(
    source: Source, after: str, *, block: str | None = None, seed: int = 0, probe: ProbeLike = None
) -> Step[DeepenDetails]:
    """Insert a block whose added branch starts at zero after stage `after`: `relu` (ReLU(x + BN(Conv x))) is
    exact after a stage that ends in a ReLU, `residual` (x + BN(Conv x)) after any; in train mode too.
    `transformer` (the default after a ViT block) copies that block with attn.proj and mlp.fc2 at zero."""
    bundle, previous = _input(source)
    probe_ = _probe(bundle, previous, probe)
    inputs = model_inputs(probe_.images, bundle.spec, identity).float()
    done = insert_identity_block(bundle, after, inputs, block, seed=seed)
    return _step(f"deeper: {done[2]['block']} block after {after}", bundle, previous, probe_, done)


def widen(source: Source, layer: str, width: int, *, seed: int = 0, probe: ProbeLike = None) -> Step[WidenDetails]:
    """Give conv `layer` `width` output channels, copies of existing ones whose readers share the weight
    (Net2WiderNet): exact for any input. A conv writing into a residual sum widens the whole stream with it."""
    if width < 1:
        raise GraftError(f"width for {layer} must be positive")
    bundle, previous = _input(source)
    probe_ = _probe(bundle, previous, probe)
    done = widen_layer(bundle, layer, width, seed=seed)
    stream = done[2].get("residual_stream") or []
    label = f"wider: {layer} → {width}"
    if done[2].get("residual_sums"):  # say that more than the named layer changed
        label += f" (its residual stream: {len(stream) + 1} writers, {len(done[2]['consumers'])} readers)"
    return _step(label, bundle, previous, probe_, done)


def reclass(
    source: Source,
    classes: list[str] | None = None,
    *,
    add: list[str] | None = None,
    drop: list[str] | None = None,
    imprint: ImageSet | str | None = None,
    probe: ProbeLike = None,
) -> Step[ReclassDetails]:
    """Change the class list by name (a full list, or classes to add/drop): kept classes keep their logits
    exactly; added ones are imprinted from `imprint`'s examples of them, else start at zero."""
    bundle, previous = _input(source)
    new_classes = resolve_classes(bundle.classes, classes, add, drop)
    probe_ = _probe(bundle, previous, probe)
    done = change_classes(bundle, new_classes, imprint=_images(imprint) if imprint is not None else None)
    return _step("classes", bundle, previous, probe_, done, reclassed=True)


def heal(
    source: Step[Any],
    images: ImageSet | str,
    *,
    steps: int = STEPS,
    temperature: float = TEMPERATURE,
    lr: float = LR,
    batch_size: int = BATCH_SIZE,
    seed: int = 0,
    console: Console | None = None,
) -> Step[HealDetails]:
    """Train the chain's latest model to match the chain's original on unlabelled `images` (distillation: KL on
    logits softened by `temperature`), then certify it against the original, with the agreement before healing
    kept beside it. The way back from an approximate or breaking step (graft.surgery.heal).

    Only the classes both models have are matched; an exact chain is refused (healing could only move it away).
    """
    check_heal_options(steps, temperature, lr, batch_size)
    if not isinstance(source, Step):
        raise GraftError(
            "heal continues a surgery chain (step.then(heal, images)): it needs the chain's original to learn from"
        )
    before = source.overall if source.overall is not None else source.certificate
    if before.verdict == "exact":
        raise GraftError("the chain is exact already: healing has nothing to restore and would only move the model")
    image_set = _images(images)
    new, details = distil(
        source.original,
        source.bundle,
        image_set,
        source.views,
        steps=steps,
        temperature=temperature,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        console=console,
    )
    probe = source.probe
    certificate = certify(
        f"heal: distilled toward the original ({steps} steps, T {temperature:g})",
        source.original,
        new,
        probe.images,
        views=source.views,
        probe_name=probe.name,
        details=dict(details),
        labels=probe.labels,
    )
    certificate.before_healing = healing_summary(before)
    if probe.name.split(" (")[0] in {image_set.name, images if isinstance(images, str) else None}:
        certificate.warnings.append(
            f"the probe comes from the healing data ({image_set.name}): agreement after healing is measured on "
            "images it trained on; give --probe with other images"
        )
    return Step(
        new,
        certificate,
        details,
        (*source.certificates, certificate),
        source.original,
        probe,
        source.views,
        source.reclassed,
        source.resized,
        healed=True,
    )


OPERATIONS = (transplant, rechannel, resize_input, recalibrate, deepen, widen, reclass, heal)
