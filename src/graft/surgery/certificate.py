"""Certificates: how close a model after surgery stays to the model before, measured on a probe set.

Both models see the same probe images, each through its own input spec, after an operation-specific *view*
(e.g. for 1→3 channels the old model sees the colour probe's luminance). Logits are compared in float64 so that
float32 rounding in a deep network never hides or fakes an exact transformation.

A certificate that says "exact" must mean the model still works, in training as in eval:
- eval-mode logits within an absolute *and* a relative bound (a tiny logit scale makes any absolute bound loose);
- train-mode logits (BatchNorm on batch statistics) within the same bounds, and after ONE optimizer step on the
  probe (SGD, lr 0.01) both models still agree: an identity that only holds with stored statistics breaks there;
- for a class change, the old model's predictions on old-class images survive among ALL the new classes (kept
  logits being equal says nothing about an imprinted class that wins every image);
- a probe that the old model puts almost entirely in one class cannot tell an approximate model from a broken one:
  such a verdict is `unverified`, never `approximate`.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from graft.bundle import Bundle
from graft.data.preprocess import LUMA_WEIGHTS, normalise, resize_float, to_unit_float
from graft.spec import InputSpec

EXACT_TOLERANCE = 1e-4  # absolute bound on max |Δlogit| for "exact" ...
RELATIVE_TOLERANCE = 1e-4  # ... and the same bound relative to the logit spread (whichever is tighter)
MIN_AGREEMENT = 0.9  # top-1 agreement below this (eval, train mode, one step, old classes) is "breaking"
STEP_RATIO = 2.0  # after one optimizer step the two models differ by at most this × what the step changed
COLLAPSED_SHARE = 0.75  # a probe whose old top-1 puts more than this share in one class cannot judge agreement
STEP_LR = 0.01
TRAIN_BATCH = 32  # the train-mode check uses at most this many probe images, as one batch

View = Callable[[torch.Tensor], torch.Tensor]


def identity(pixels: torch.Tensor) -> torch.Tensor:
    return pixels


def luminance(pixels: torch.Tensor) -> torch.Tensor:
    """A float image's ITU-R 601-2 luminance, unrounded (the exact image the claim is about)."""
    if pixels.shape[1] == 1:
        return pixels
    weights = torch.tensor(LUMA_WEIGHTS, dtype=pixels.dtype).view(1, 3, 1, 1)
    return (pixels * weights).sum(dim=1, keepdim=True)


def colourise(pixels: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Gray probes made colourful (a seeded affine map per image and channel); colour probes pass unchanged.

    Claims about colour inputs need colour probes, even when the only real data at hand is gray.
    """
    if pixels.shape[1] != 1:
        return pixels
    generator = torch.Generator().manual_seed(seed)
    n = pixels.shape[0]
    scale = torch.rand((n, 3, 1, 1), generator=generator, dtype=pixels.dtype) * 0.7 + 0.3
    shift = torch.rand((n, 3, 1, 1), generator=generator, dtype=pixels.dtype) * (1 - scale)
    return pixels * scale + shift


@dataclass(frozen=True)
class Views:
    """What each model is shown of a probe image (float pixels in [0, 1] at its own input size).

    `through_new_input` (a size stem's claim): the new model sees the probe resized to its size in float, and the
    old model sees *that image* resized to its own size in float, by the old spec's rule (no uint8 rounding in
    between); otherwise each model sees the probe resized to its own size as its preprocessing does.
    """

    old: View = identity
    new: View = identity
    note: str = "both models see the same images"
    through_new_input: bool = False


@dataclass
class Certificate:
    """One surgery step, measured: max |Δlogit| and top-1 agreement over the classes both models have, in eval
    mode, in train mode and after one optimizer step, plus what the probe was and how it spread over classes.

    Fields after `details` were added with issue 20; records written before lack them (`graft info` copes).
    """

    operation: str
    verdict: str  # exact | approximate | unverified | breaking
    max_abs_logit_delta: float
    top1_agreement: float
    logit_scale: float  # max |old logit|
    probe: str
    probe_count: int
    compared_classes: int
    new_class_wins: float = 0.0  # share of probes whose new top-1 is a class the old model did not have
    views: str = ""
    details: dict = field(default_factory=dict)
    logit_spread: float = 0.0  # median over probes of the old model's logit range: what the relative bound uses
    relative_delta: float = 0.0  # max |Δlogit| / logit_spread
    probe_classes: dict[str, int] = field(default_factory=dict)  # the old model's top-1 over the probe
    probe_collapsed: bool = False  # one class takes more than COLLAPSED_SHARE of the probe
    train_forward_delta: float | None = None  # max |Δlogit| with BatchNorm on batch statistics (train mode)
    train_top1_agreement: float | None = None
    step_delta: float | None = None  # max |Δlogit| (eval) after one SGD step on the probe, each model its own
    step_top1_agreement: float | None = None
    step_ratio: float | None = None  # step_delta / how far the step moved the old model's logits
    step_note: str = ""  # the step's optimizer and labels
    old_class_agreement: float | None = None  # class changes: old top-1 kept among all new classes
    old_class_images: int = 0  # how many probe images that agreement is measured on
    warnings: list[str] = field(default_factory=list)
    # After healing (issue 18): the same comparison before it, as `healing_summary` gives it. Absent otherwise.
    before_healing: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        text = (
            f"{self.verdict:<11} {self.operation}: max |Δlogit| {self.max_abs_logit_delta:.2e} "
            f"({self.relative_delta:.1e} of the logit spread), top-1 agreement {self.top1_agreement:.2%}"
        )
        if self.train_forward_delta is not None:
            text += f"; train mode {self.train_forward_delta:.2e}"
        if self.step_top1_agreement is not None:
            text += f", after one step {self.step_top1_agreement:.1%} agree (Δ {self.step_ratio:.2g}× the step's own)"
        if self.old_class_agreement is not None:
            text += f"; old predictions kept on {self.old_class_agreement:.1%} of {self.old_class_images} images"
        if self.new_class_wins:
            text += f"; new classes take top-1 on {self.new_class_wins:.1%}"
        if self.before_healing is not None:
            text += f"; before healing: {healing_text(self.before_healing)}"
        text += f"; probe: {self.probe_count} {self.probe} images, {spread_text(self.probe_classes)}"
        for warning in self.warnings:
            text += f"\n            warning: {warning}"
        return text


HEALING_KEYS = (
    "verdict",
    "max_abs_logit_delta",
    "top1_agreement",
    "train_top1_agreement",
    "step_top1_agreement",
    "old_class_agreement",
)


def healing_summary(before: Certificate) -> dict:
    """What a healed certificate keeps of the comparison before healing: the verdict and every agreement."""
    return {key: getattr(before, key) for key in HEALING_KEYS}


def healing_text(before: dict) -> str:
    """'breaking, top-1 agreement 42.19%': the comparison before healing, as certificates print it."""
    text = f"{before.get('verdict', '?')}, top-1 agreement "
    agreement = before.get("top1_agreement")
    return text + (f"{agreement:.2%}" if isinstance(agreement, int | float) else "?")


def spread_text(counts: dict[str, int]) -> str:
    """'3 classes, top 80 %' : how the old model's predictions spread over the probe."""
    total = sum(counts.values())
    if not total:
        return "class spread unknown"
    return f"old top-1 in {len(counts)} classes (largest {max(counts.values()) / total:.0%})"


def within_bounds(delta: float, spread: float) -> bool:
    """The "exact" bound: absolute, and relative to the logit spread, since logits of scale 1e-5 make 1e-4 loose."""
    return delta <= EXACT_TOLERANCE and delta <= RELATIVE_TOLERANCE * spread


def judge(c: Certificate) -> str:
    """exact | approximate | unverified | breaking, from everything measured."""
    exact = (
        within_bounds(c.max_abs_logit_delta, c.logit_spread)
        and (c.train_forward_delta is None or within_bounds(c.train_forward_delta, c.logit_spread))
        and (c.step_ratio is None or c.step_ratio <= STEP_RATIO)
        and (c.old_class_agreement is None or c.old_class_agreement == 1.0)
    )
    if exact:
        return "exact"
    # A reparameterised model (widened, channels folded) steps a little differently from the original: only a
    # step that moves it far more than the original *and* changes its predictions counts against it.
    stepped = c.step_top1_agreement if c.step_ratio is not None and c.step_ratio > STEP_RATIO else None
    measured = (c.top1_agreement, c.train_top1_agreement, stepped, c.old_class_agreement)
    if min(a for a in measured if a is not None) < MIN_AGREEMENT:
        return "breaking"
    return "unverified" if c.probe_collapsed else "approximate"


def verdict(delta: float, agreement: float, *, tolerance: float = EXACT_TOLERANCE) -> str:
    """The eval-only verdict (kept for callers that measure logits themselves); see `judge` for certificates."""
    if delta <= tolerance:
        return "exact"
    return "approximate" if agreement >= MIN_AGREEMENT else "breaking"


def model_inputs(probe: torch.Tensor, spec: InputSpec, view: View) -> torch.Tensor:
    """uint8 probe images → what the model with `spec` receives under `view`, in float64."""
    return normalise(view(to_unit_float(probe, spec).double()), spec)


def pair_inputs(probe: torch.Tensor, old: InputSpec, new: InputSpec, views: Views) -> tuple[torch.Tensor, torch.Tensor]:
    """(old model's inputs, new model's inputs) for uint8 probe images under `views`, in float64."""
    if not views.through_new_input:
        return model_inputs(probe, old, views.old), model_inputs(probe, new, views.new)
    new_pixels = resize_float(probe.double() / 255.0, new)
    old_pixels = resize_float(new_pixels, old)
    return normalise(views.old(old_pixels), old), normalise(views.new(new_pixels), new)


def _logits(model: torch.nn.Module, inputs: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return torch.cat([model(inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size)])


def _trainable(bundle: Bundle) -> torch.nn.Module:
    """A float64 copy in train mode, dropout off: BatchNorm on batch statistics is what is being certified, and
    random dropout masks would differ between two models of different shapes."""
    model = copy.deepcopy(bundle.model).double().train()
    for module in model.modules():
        if "drop" in type(module).__name__.lower():
            module.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return model


def _compare(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    return float((a - b).abs().max()), float((a.argmax(1) == b.argmax(1)).double().mean())


def _spread(logits: torch.Tensor) -> float:
    """The median over probes of (max − min logit): the margins predictions are decided by."""
    if logits.shape[1] < 2:
        return float(logits.abs().max())
    return float((logits.max(1).values - logits.min(1).values).median())


@dataclass
class _Pair:
    """Both models, the probe as each sees it, and which logit columns hold the classes they share."""

    old: Bundle
    new: Bundle
    old_inputs: torch.Tensor
    new_inputs: torch.Tensor
    old_index: list[int]
    new_index: list[int]


def _train_behaviour(pair: _Pair, targets: list[str | None], *, step: bool = True) -> dict:
    """Train-mode logits on one batch, then (with `step`) one SGD step on it (cross-entropy, each model its own
    classes) and eval-mode logits of both stepped models on that batch."""
    n = min(len(pair.old_inputs), TRAIN_BATCH)
    keep = [i for i in range(n) if targets[i] is not None]
    if n < 2 or not pair.old_index or not keep:
        return {}
    old_model, new_model = _trainable(pair.old), _trainable(pair.new)
    old_before = _logits(copy.deepcopy(old_model), pair.old_inputs[:n])[:, pair.old_index] if step else None
    old_logits = old_model(pair.old_inputs[:n])
    new_logits = new_model(pair.new_inputs[:n])
    forward_delta, forward_agreement = _compare(
        old_logits[:, pair.old_index].detach(), new_logits[:, pair.new_index].detach()
    )
    forward = {"train_forward_delta": forward_delta, "train_top1_agreement": forward_agreement}
    if old_before is None:
        return forward
    for model, logits, bundle in ((old_model, old_logits, pair.old), (new_model, new_logits, pair.new)):
        target = torch.tensor([bundle.classes.index(str(targets[i])) for i in keep])
        loss = torch.nn.functional.cross_entropy(logits[keep], target)
        loss.backward()
        with torch.no_grad():
            for parameter in model.parameters():
                if parameter.grad is not None:
                    parameter -= STEP_LR * parameter.grad
    old_after = _logits(old_model, pair.old_inputs[:n])[:, pair.old_index]
    new_after = _logits(new_model, pair.new_inputs[:n])[:, pair.new_index]
    step_delta, step_agreement = _compare(old_after, new_after)
    moved = float((old_after - old_before).abs().max())
    return {
        **forward,
        "step_ratio": step_delta / moved if moved > 0 else (0.0 if step_delta == 0 else float("inf")),
        "step_delta": step_delta,
        "step_top1_agreement": step_agreement,
    }


def certify(
    operation: str,
    old: Bundle,
    new: Bundle,
    probe: torch.Tensor,
    *,
    views: Views = Views(),
    probe_name: str = "synthetic",
    details: dict | None = None,
    labels: Sequence[str] | None = None,
) -> Certificate:
    """Compare `old` and `new` on the probe images; classes are matched by name.

    `labels` (class names, one per probe image, when the probe is labelled data) pick the old-class images a
    class change is judged on and the targets of the optimizer step; without them the old model's predictions
    stand in.
    """
    shared = [c for c in new.classes if c in old.classes]
    pair = _Pair(
        old,
        new,
        *pair_inputs(probe, old.spec, new.spec, views),
        [old.classes.index(c) for c in shared],
        [new.classes.index(c) for c in shared],
    )
    old_logits = _logits(copy.deepcopy(old.model).double(), pair.old_inputs)
    new_logits = _logits(copy.deepcopy(new.model).double(), pair.new_inputs)
    old_top = [old.classes[i] for i in old_logits.argmax(1).tolist()]
    new_top = [new.classes[i] for i in new_logits.argmax(1).tolist()]
    warnings: list[str] = []
    if shared:
        a, b = old_logits[:, pair.old_index], new_logits[:, pair.new_index]
        delta, agreement = _compare(a, b)
        scale, spread = float(a.abs().max()), _spread(a)
    else:
        delta, agreement, scale, spread = float("inf"), 0.0, float(old_logits.abs().max()), 0.0
    counts = dict(sorted(Counter(old_top).items(), key=lambda item: -item[1]))
    collapsed = len(old.classes) > 1 and max(counts.values()) / len(probe) > COLLAPSED_SHARE
    if collapsed:
        top, count = next(iter(counts.items()))
        warnings.append(
            f"the old model puts {count} of {len(probe)} probe images in class {top}: agreement on such a probe "
            "says little; give --probe with real images of every class"
        )
    added = np.array([c not in old.classes for c in new.classes])
    wins = float(added[new_logits.argmax(1).numpy()].mean()) if added.any() else 0.0
    labelled = labels is not None and len(labels) == len(probe)
    targets: list[str | None] = [
        label if labelled and label in shared else top if top in shared else None
        for label, top in zip(labels if labelled else old_top, old_top, strict=True)
    ]
    # Each model's loss is a softmax over its own classes, so one step differs by design when the class set
    # changes (dropping classes most): then the step is not taken; the train-mode forward pass is still compared.
    same_classes = set(new.classes) == set(old.classes)
    train = _train_behaviour(pair, targets, step=same_classes)
    step_labels = "probe labels" if labelled else "the old model's predictions"
    step_note = f"one SGD step, lr {STEP_LR}, on {min(len(probe), TRAIN_BATCH)} probe images ({step_labels})"
    if not same_classes:
        step_note = "train-mode forward only: with another class set, one optimizer step differs by design"
    old_class_agreement, old_class_images = None, 0
    if new.classes != old.classes:
        # Images of kept classes that the old model put in a kept class: a removed class's prediction cannot survive.
        on_old = [i for i, label in enumerate(labels or []) if labelled and label in shared and old_top[i] in shared]
        if not on_old:
            if labelled:
                warnings.append(
                    "the probe holds no images of the kept classes; old predictions are compared where "
                    "the old model predicts a kept class"
                )
            on_old = [i for i, top in enumerate(old_top) if top in shared]
        old_class_images = len(on_old)
        if on_old:
            old_class_agreement = sum(old_top[i] == new_top[i] for i in on_old) / len(on_old)
    certificate = Certificate(
        operation=operation,
        verdict="",
        max_abs_logit_delta=delta,
        top1_agreement=agreement,
        logit_scale=scale,
        probe=probe_name,
        probe_count=len(probe),
        compared_classes=len(shared),
        new_class_wins=wins,
        views=views.note,
        details=details or {},
        logit_spread=spread,
        relative_delta=delta / spread if spread > 0 else float("inf") if delta > 0 else 0.0,
        probe_classes=counts,
        probe_collapsed=collapsed,
        step_note=step_note if train else "no train-mode check (needs two probe images and a shared class)",
        old_class_agreement=old_class_agreement,
        old_class_images=old_class_images,
        warnings=warnings,
        **train,
    )
    certificate.verdict = judge(certificate)
    return certificate


def synthetic_probe(count: int, size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """Seeded smooth colour images with texture (uint8), for when no real probe data is given.

    Low-resolution noise upsampled gives shapes and edges at several scales; pure per-pixel noise would be far
    from anything a classifier was trained on.
    """
    generator = torch.Generator().manual_seed(seed)
    images = []
    for coarse in (4, 8, 16):
        low = torch.rand((count, 3, coarse, coarse), generator=generator)
        images.append(torch.nn.functional.interpolate(low, size=size, mode="bicubic", align_corners=False))
    mix = sum(images) / len(images) + 0.05 * torch.randn((count, 3, *size), generator=generator)
    return (mix.clamp(0, 1) * 255).round().to(torch.uint8)
