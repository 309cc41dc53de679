"""Surgery's public single operations: chained steps, their certificates, and the one-liner built from them."""

from __future__ import annotations

import io
import json

import pytest
import torch
from rich.console import Console

import graft
from graft.bundle import Bundle
from graft.data.preprocess import to_model_input
from graft.errors import GraftError
from graft.surgery import (
    Probe,
    Step,
    deepen,
    rechannel,
    reclass,
    reshape,
    resize_input,
    widen,
)
from graft.surgery.certificate import synthetic_probe
from surgery_helpers import measured_bundle

CLASSES = [f"c{i}" for i in range(5)]


def gray_bundle(seed: int = 0) -> Bundle:
    """A 1-channel resnet10t at 32×32 whose logits clearly depend on the input (surgery_helpers.measured_bundle)."""
    return measured_bundle(CLASSES, 32, seed)


def logits(bundle: Bundle, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return bundle.model.eval()(to_model_input(images, bundle.spec))


def colour_images(seed: int, count: int = 8) -> torch.Tensor:
    return synthetic_probe(count, (32, 32), seed)  # smooth colour shapes, seeded


def test_two_operations_give_two_certificates_and_an_exact_chain():
    original = gray_bundle()
    a, b = colour_images(1), colour_images(2)
    assert (logits(original, a) - logits(original, b)).abs().max() > 0.1  # the output depends on the input

    first = rechannel(original, 3)
    assert isinstance(first, Step) and first.overall is None and first.verdict == "exact"
    assert first.details["rule"].startswith("luminance") and first.certificate.details is first.details
    chained = first.then(deepen, "layer3")
    assert [c.operation for c in chained.certificates] == ["channels 1 → 3", "deeper: relu block after layer3"]
    assert chained.certificate is chained.certificates[-1] and chained.details["after"] == "layer3"
    assert chained.probe is first.probe and chained.original is original
    assert all(c.verdict == "exact" for c in chained.certificates)
    assert chained.overall is not None and chained.overall.operation == "whole chain"
    assert chained.verdict == chained.overall.verdict == "exact"
    assert "luminance" in chained.overall.views  # the channel step's views hold for the whole chain

    final = chained.bundle
    assert final.spec.channels == 3 and original.spec.channels == 1
    # On a colour image the new model computes what the original computes on its luminance.
    assert torch.allclose(logits(final, a), logits(original, a), atol=1e-4)
    assert not torch.allclose(logits(final, a), logits(original, b), atol=1e-2)


def test_the_one_liner_is_the_same_chain(tmp_path):
    original = gray_bundle()
    printed = io.StringIO()
    one = reshape(
        original,
        tmp_path / "one",
        channels=3,
        insert_after="layer3",
        widen={"layer1.0.conv1": 80},
        probe_count=16,
        console=Console(file=printed, width=400),
    )
    chain = (
        rechannel(original, 3, probe=Probe.synthetic(original.spec.size, count=16))
        .then(deepen, "layer3")
        .then(widen, "layer1.0.conv1", 80)
    )
    mine, theirs = chain.bundle.model.state_dict(), one.bundle.model.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert [c.to_dict() for c in chain.certificates] == [c.to_dict() for c in one.certificates]
    assert chain.overall.to_dict() == one.overall.to_dict()
    lines = [*(c.line() for c in chain.certificates), chain.overall.line(), f"wrote {tmp_path / 'one'} (exact)"]
    assert printed.getvalue().splitlines() == lines

    saved = chain.save(tmp_path / "chain")
    assert saved.path == tmp_path / "chain"
    records = [json.loads((tmp_path / name / "graft.json").read_text())["provenance"] for name in ("one", "chain")]
    for record in records:
        record["surgery"][-1].pop("at")
    assert records[0] == records[1] and records[0]["surgery"][-1]["verdict"] == "exact"
    assert graft.load(tmp_path / "chain").architecture.edits == one.bundle.architecture.edits
    assert original.provenance.surgery == [] and original.metrics == {"accuracy": 0.5}  # the input is unchanged


def test_a_new_class_list_moves_metrics_aside_when_saved(tmp_path):
    step = reclass(gray_bundle(), add=["extra"])
    assert step.details["added"] == ["extra"] and step.details["zero_initialised"] == ["extra"]
    assert step.bundle.metrics == {"accuracy": 0.5}  # the unsaved step's bundle is not yet finished
    loaded = graft.load(step.save(tmp_path / "more").path)
    assert loaded.classes == [*CLASSES, "extra"] and loaded.metrics == {}
    assert loaded.provenance.metrics_before_surgery == {"accuracy": 0.5}
    assert loaded.provenance.surgery[-1].steps[0]["operation"] == "classes"


def test_a_chain_started_with_a_resize_probes_at_the_larger_size():
    step = resize_input(gray_bundle(), 48, mode="resample", probe="digits")
    assert tuple(step.probe.images.shape[2:]) == (48, 48) and step.certificate.probe == "digits"
    assert step.bundle.spec.size == (48, 48) and step.details["to"] == [48, 48]


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (lambda b: rechannel(b, 1), "already takes 1 channel"),
        (lambda b: rechannel(b, 3).then(deepen, "layer9"), "no layer named 'layer9'"),
        (lambda b: rechannel(b, 3).then(widen, "layer1.0.conv1", 0), "must be positive"),
        (lambda b: reclass(b, ["x", "y"]), "keeps none"),
        (lambda b: rechannel(b, 3).then(deepen, "layer2", probe=Probe.synthetic((32, 32))), "keeps the probe"),
        (lambda b: Probe(torch.zeros(2, 1, 8, 8)), "uint8"),
    ],
)
def test_impossible_requests_are_one_line_errors_and_write_nothing(tmp_path, request_, message):
    out = tmp_path / "out"
    with pytest.raises(GraftError, match=message) as error:
        request_(gray_bundle()).save(out)
    assert len(str(error.value).splitlines()) == 1
    assert not out.exists()


def test_require_exact_writes_nothing_for_an_inexact_chain(tmp_path):
    step = rechannel(gray_bundle(), 3).then(resize_input, 48, mode="resample")
    assert step.certificates[0].verdict == "exact" and step.verdict != "exact"
    with pytest.raises(GraftError, match="nothing written"):
        step.save(tmp_path / "out", require="exact")
    assert not (tmp_path / "out").exists()
