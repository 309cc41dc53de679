"""Healing (issue 18): distilling the original back into a model after an approximate or breaking surgery."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest
import torch
from PIL import Image

import graft
from cli_helpers import run_cli
from graft.bundle import Bundle
from graft.cli import surgery as surgery_cli
from graft.data.base import ArrayImages
from graft.data.preprocess import to_model_input
from graft.errors import GraftError
from graft.surgery import Probe, heal, rechannel, reclass, reshape, resize_input
from graft.surgery.certificate import synthetic_probe
from graft.surgery.heal import check_heal_options, distil
from surgery_helpers import measured_bundle

CLASSES = ["a", "b", "c", "d"]
SIZE, NEW_SIZE = 16, 24


def tiny_bundle(seed: int = 0) -> Bundle:
    """A gray resnet10t at 16×16 whose logits clearly depend on the input (surgery_helpers.measured_bundle)."""
    return measured_bundle(CLASSES, SIZE, seed)


def image_set(count: int = 128, seed: int = 3) -> ArrayImages:
    """Unlabelled-in-effect images (one dummy class): healing never reads labels."""
    pixels = synthetic_probe(count, (NEW_SIZE, NEW_SIZE), seed).permute(0, 2, 3, 1).contiguous().numpy()
    return ArrayImages("heal-set", pixels, np.zeros(count, dtype=np.int64), ["unlabelled"])


def probe() -> Probe:
    return Probe(synthetic_probe(16, (NEW_SIZE, NEW_SIZE), 7), "probe-set")


@pytest.fixture(scope="module")
def resized():
    """The tiny model resized 16 → 24: a breaking step (steps are immutable, so tests share it)."""
    return resize_input(tiny_bundle(), NEW_SIZE, mode="resample", probe=probe())


def test_healing_raises_agreement_on_a_broken_chain():
    original = tiny_bundle()
    test_probe = probe()
    with torch.no_grad():
        reference = original.model.eval()(to_model_input(test_probe.images, original.spec))
    # The reference must depend on its input, or agreeing with it would mean nothing.
    assert float(reference.std(dim=0).min()) > 0.05
    assert len(set(reference.argmax(1).tolist())) >= 2

    broken = resize_input(original, NEW_SIZE, mode="resample", probe=test_probe)
    assert broken.certificate.verdict == "breaking"
    healed = broken.then(heal, image_set(), steps=40, lr=3e-3, batch_size=8, seed=0)
    before, after = broken.certificate, healed.certificate
    assert after.before_healing == {
        "verdict": before.verdict,
        "max_abs_logit_delta": before.max_abs_logit_delta,
        "top1_agreement": before.top1_agreement,
        "train_top1_agreement": before.train_top1_agreement,
        "step_top1_agreement": before.step_top1_agreement,
        "old_class_agreement": before.old_class_agreement,
    }
    assert after.top1_agreement > before.top1_agreement
    assert after.max_abs_logit_delta < before.max_abs_logit_delta / 2
    assert after.details["loss_last"] < after.details["loss_first"]
    # The heal step is measured against the original; the whole chain is that same comparison.
    assert healed.overall is not None and healed.overall.operation == "whole chain"
    assert healed.overall.top1_agreement == after.top1_agreement
    assert "before healing: breaking" in after.line()
    # The original is untouched, and the healed model really differs from the broken one.
    with torch.no_grad():
        again = original.model.eval()(to_model_input(test_probe.images, original.spec))
    assert torch.equal(reference, again)
    assert not torch.equal(
        broken.bundle.model.state_dict()["backbone.fc.weight"], healed.bundle.model.state_dict()["backbone.fc.weight"]
    )


def test_healing_is_deterministic_with_a_seed(resized):
    original, student = resized.original, resized
    images = image_set(32)

    def run(seed: int) -> dict[str, torch.Tensor]:
        bundle, _ = distil(original, student.bundle, images, student.views, steps=3, batch_size=4, seed=seed)
        return bundle.model.state_dict()

    first, second, other = run(0), run(0), run(1)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"steps": 0}, "--heal-steps"),
        ({"steps": 2.5}, "--heal-steps"),
        ({"temperature": 0.0}, "--heal-temperature"),
        ({"temperature": float("nan")}, "--heal-temperature"),
        ({"lr": -1e-3}, "--heal-lr"),
        ({"lr": float("inf")}, "--heal-lr"),
        ({"batch_size": 1}, "--heal-batch"),
    ],
)
def test_healing_options_are_validated(settings, message):
    values = {"steps": 5, "temperature": 2.0, "lr": 1e-3, "batch_size": 8, **settings}
    with pytest.raises(GraftError, match=message):
        check_heal_options(**values)
    with pytest.raises(GraftError, match=message):  # before any surgery work
        reshape(
            tiny_bundle(),
            size=NEW_SIZE,
            size_mode="resample",
            heal="digits",
            **{f"heal_{k.removesuffix('_size')}": v for k, v in settings.items()},
        )


def test_healing_is_refused_where_it_cannot_help(resized):
    original = resized.original
    with pytest.raises(GraftError, match="continues a surgery chain"):
        heal(original, image_set())  # type: ignore[arg-type]
    exact = rechannel(original, 3, probe=probe())
    assert exact.certificate.verdict == "exact"
    with pytest.raises(GraftError, match="exact already"):
        exact.then(heal, image_set(), steps=2)
    with pytest.raises(GraftError, match="is not one"):
        reshape(original, heal="digits")
    with pytest.raises(GraftError, match="at least 2 images"):
        resized.then(heal, image_set(1), steps=2)
    foreign = Bundle(original.model, original.architecture, original.spec, ["w", "x", "y", "z"])
    with pytest.raises(GraftError, match="shares no class"):
        distil(original, foreign, image_set(), resized.views, steps=1)


def test_healing_after_a_class_change_distils_the_shared_classes_only(resized):
    step = resized.then(reclass, add=["e"]).then(reclass, drop=["a"])
    healed = step.then(heal, image_set(32), steps=2, batch_size=4)
    details = healed.certificate.details
    assert details["distilled_classes"] == 3 and details["not_distilled"] == ["e"]
    assert healed.certificate.old_class_agreement is not None  # still judged among all the new classes
    row = healed.bundle.classes.index("e")
    # The added class's row is never trained toward the old model (it has no such class).
    before, after = step.bundle.model.state_dict(), healed.bundle.model.state_dict()
    assert torch.equal(before["backbone.fc.weight"][row], after["backbone.fc.weight"][row])


def test_require_judges_a_healed_chain_by_its_heal_certificate(resized):
    step = resized
    healed = step.then(heal, image_set(32), steps=2, batch_size=4)
    assert step.weakest == "breaking"
    assert healed.weakest == max((healed.certificate.verdict, healed.overall.verdict), key=graft.surgery.VERDICTS.index)


def test_cli_defaults_are_the_api_defaults():
    api = inspect.signature(reshape).parameters
    cli = inspect.signature(surgery_cli.surgery_command).parameters
    for name in ("heal_steps", "heal_temperature", "heal_lr", "heal_batch", "seed"):
        assert cli[name].default == api[name].default, name


def write_folder(root, count: int = 6) -> str:
    for label in ("p", "q"):
        (root / label).mkdir(parents=True)
        for i in range(count):
            pixels = synthetic_probe(1, (NEW_SIZE, NEW_SIZE), 50 + i + 10 * len(label))[0, 0].numpy()
            Image.fromarray(pixels).save(root / label / f"{i}.png")
    return f"folder:{root}"


def test_cli_heals_and_records_both_agreements(tmp_path, capsys):
    source = tmp_path / "old"
    tiny_bundle().save(source)
    data = write_folder(tmp_path / "photos")
    args = [
        "surgery",
        str(source),
        "-o",
        str(tmp_path / "new"),
        "--size",
        str(NEW_SIZE),
        "--size-mode",
        "resample",
        "--heal",
        data,
    ]
    code, out, err = run_cli([*args, "--heal-steps", "3", "--heal-batch", "4", "--probe-count", "8", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["steps"][-1]["operation"].startswith("heal")
    record = json.loads((tmp_path / "new" / "graft.json").read_text())
    entry = record["provenance"]["surgery"][0]
    heal_certificate, overall = entry["steps"][-1], entry["overall"]
    for certificate in (heal_certificate, overall):
        assert certificate["before_healing"]["top1_agreement"] == entry["steps"][0]["top1_agreement"]
        assert 0.0 <= certificate["top1_agreement"] <= 1.0
    assert heal_certificate["details"]["steps"] == 3 and heal_certificate["details"]["source"]
    code, out, err = run_cli(["info", str(tmp_path / "new")], capsys)
    assert code == 0 and "before healing:" in out
    code, out, err = run_cli([*args, "--heal-steps", "0", "--force"], capsys)
    assert code == 2 and "--heal-steps" in err
