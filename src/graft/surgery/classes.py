"""Changing a trained model's class list by name: kept classes keep their classifier rows exactly.

New classes are *imprinted* when examples are given (Qi et al., 2018: the normalised mean feature of their
images, scaled to the typical norm of the existing rows, with the mean existing bias), else start at zero
(their logit is 0 until fine-tuning). Removed classes' rows are dropped.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from graft.bundle import Bundle
from graft.data.base import ImageSet
from graft.data.preprocess import to_model_input
from graft.errors import GraftError
from graft.models.factory import GraftModel, build_model
from graft.surgery.certificate import Views
from graft.surgery.details import ReclassDetails


def resolve_classes(
    current: list[str], classes: list[str] | None = None, add: list[str] | None = None, drop: list[str] | None = None
) -> list[str]:
    """The new class list from a full list, or from additions and removals."""
    if classes is not None and (add or drop):
        raise GraftError("give either the full new class list or classes to add/drop, not both")
    if classes is None:
        unknown = [c for c in drop or [] if c not in current]
        if unknown:
            raise GraftError(f"cannot drop {', '.join(unknown)}: the model has no such class")
        existing = [c for c in add or [] if c in current]
        if existing:
            raise GraftError(f"cannot add {', '.join(existing)}: the model already has it")
        classes = [c for c in current if c not in (drop or [])] + list(add or [])
    classes = [c.strip() for c in classes]
    duplicates = sorted({c for c in classes if classes.count(c) > 1})
    if duplicates or "" in classes:
        raise GraftError(f"class names must be unique and non-empty (repeated: {', '.join(duplicates) or '«empty»'})")
    if not any(c in current for c in classes):
        raise GraftError("the new class list keeps none of the model's classes; train a new model instead")
    if len(classes) < 2:
        raise GraftError("a classifier needs at least two classes")
    return classes


def _classifier_keys(model: GraftModel) -> tuple[str, str | None]:
    layer = model.classifier()
    name = next(n for n, m in model.named_modules() if m is layer)
    return f"{name}.weight", f"{name}.bias" if getattr(layer, "bias", None) is not None else None


def change_classes(
    bundle: Bundle, classes: list[str], *, imprint: ImageSet | None = None, per_class: int = 256
) -> tuple[Bundle, Views, ReclassDetails]:
    old_classes = bundle.classes
    if classes == old_classes:
        raise GraftError("the class list is unchanged")
    new_arch = dataclasses.replace(bundle.architecture, num_classes=len(classes))
    model = build_model(new_arch, bundle.spec)
    own, state = model.state_dict(), bundle.model.state_dict()
    keep = [(old_classes.index(c), i) for i, c in enumerate(classes) if c in old_classes]
    added = [i for i, c in enumerate(classes) if c not in old_classes]
    weight_key, bias_key = _classifier_keys(model)
    # Rows follow class names: the classifier's tensors always (a reordering keeps their shape), and any other
    # tensor whose first dimension is the class count (e.g. a distillation head).
    for key, value in state.items():
        if own[key].shape == value.shape and key not in (weight_key, bias_key):
            continue
        if value.shape[0] != len(old_classes) or own[key].shape[1:] != value.shape[1:]:
            raise GraftError(f"{key} changes shape with the class count in a way graft cannot map ({value.shape})")
        rows = torch.zeros_like(own[key])
        for old_i, new_i in keep:
            rows[new_i] = value[old_i]
        state[key] = rows
    imprinted: list[str] = []
    if imprint is not None and added:
        imprinted = _imprint(bundle, state, weight_key, bias_key, classes, added, keep, imprint, per_class)
    model.load_state_dict(state, strict=True)
    model.eval()
    new = dataclasses.replace(bundle, model=model, architecture=new_arch, classes=list(classes), path=None)
    details: ReclassDetails = {
        "kept": [old_classes[o] for o, _ in keep],
        "removed": [c for c in old_classes if c not in classes],
        "added": [classes[i] for i in added],
        "imprinted": imprinted,
        "zero_initialised": [classes[i] for i in added if classes[i] not in imprinted],
        "claim": "exact on the kept classes",
    }
    return new, Views(note="logits of the classes both models have"), details


def _features(bundle: Bundle, images: ImageSet, positions: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        inputs = to_model_input(images.batch(positions, bundle.spec), bundle.spec)
        return bundle.model.pre_logits(inputs).flatten(1).double()


def _imprint(
    bundle: Bundle,
    state: dict[str, torch.Tensor],
    weight_key: str,
    bias_key: str | None,
    classes: list[str],
    added: list[int],
    keep: list[tuple[int, int]],
    images: ImageSet,
    per_class: int,
) -> list[str]:
    """Imprint the new rows; when the data also holds kept classes, set each new bias by a 1-D search.

    The mean feature of a class with non-negative (post-ReLU) features points roughly where every class's
    features do, so with the average bias an imprinted class would win far too often. The bias that maximises
    accuracy on the given examples (new and kept classes) corrects that without touching any weight.
    """
    weight = state[weight_key]
    kept_rows = [n for _, n in keep]
    if not kept_rows:  # every class is new (continuing a bundle on other data): unit rows, zero biases
        kept_rows, target_norm = [], torch.tensor(1.0, dtype=torch.float64)
    else:
        target_norm = weight[kept_rows].flatten(1).double().norm(dim=1).mean()
    labels = images.labels
    bundle.model.eval()
    examples: dict[int, torch.Tensor] = {}
    for i in added:
        if classes[i] not in images.classes:
            continue
        positions = np.flatnonzero(labels == images.classes.index(classes[i]))[:per_class]
        if len(positions) == 0:
            continue
        features = _features(bundle, images, positions)
        direction = torch.nn.functional.normalize(torch.nn.functional.normalize(features, dim=1).mean(0), dim=0)
        state[weight_key][i] = (direction * target_norm).reshape(weight.shape[1:]).to(weight.dtype)
        if bias_key is not None and kept_rows:
            state[bias_key][i] = state[bias_key][kept_rows].mean()
        examples[i] = features
    others = {
        n: _features(bundle, images, np.flatnonzero(labels == images.classes.index(classes[n]))[: per_class // 4])
        for n in kept_rows
        if classes[n] in images.classes
    }
    others = {n: f for n, f in others.items() if len(f)}
    if bias_key is not None and examples and others:
        _calibrate_biases(state, weight_key, bias_key, {**others, **examples}, list(examples))
    return [classes[i] for i in examples]


def _calibrate_biases(
    state: dict[str, torch.Tensor], weight_key: str, bias_key: str, examples: dict[int, torch.Tensor], new: list[int]
) -> None:
    features = torch.cat(list(examples.values()))
    truth = torch.cat([torch.full((len(f),), k) for k, f in examples.items()])
    raw = features @ state[weight_key].flatten(1).double().T  # logits without biases
    bias = state[bias_key].double().clone()
    # Start with every new class out of the running, so each is first set against the kept classes alone
    # (imprinted rows of post-ReLU features all score high everywhere and would otherwise mask each other).
    bias[new] = float(raw.min() - raw.max() - bias.abs().max() - 1)
    for _ in range(2):  # coordinate search: each new class's bias given the others'
        for i in new:
            others = raw + bias
            others[:, i] = -torch.inf
            rest_max, rest_arg = others.max(1)
            threshold_of = rest_max - raw[:, i]  # class i wins an example iff its bias exceeds this
            candidates = torch.sort(threshold_of).values
            thresholds = torch.cat([candidates[:1] - 1, (candidates[1:] + candidates[:-1]) / 2, candidates[-1:] + 1])
            wins = thresholds.view(-1, 1) > threshold_of.view(1, -1)
            correct = torch.where(wins, truth.view(1, -1) == i, (rest_arg == truth).view(1, -1)).sum(1)
            bias[i] = thresholds[int(correct.argmax())]
    state[bias_key][new] = bias[new].to(state[bias_key].dtype)
