"""Certificates that cannot lie (issue 20): "exact" must mean the model still works in training as in eval, on
probes that can tell, for old classes too; and the refusals around surgery say what is really wrong.

The trained model is the session's tiny resnet10t on scikit-learn digits (real images, a few seconds).
"""

from __future__ import annotations

import copy
import dataclasses
import io
import os

import numpy as np
import pytest
import torch

import graft
from graft.bundle import Bundle
from graft.cli.bundle import _describe
from graft.data.preprocess import to_model_input
from graft.data.sources import load_everything
from graft.errors import GraftError
from graft.models.factory import create_model
from graft.surgery import Probe, deepen, draw_probe, rechannel, reclass, reshape, resize_input, widen


@pytest.fixture(scope="module")
def digits():
    return load_everything("digits", download=False)


def _batch(bundle: Bundle, images, positions: np.ndarray) -> torch.Tensor:
    pixels = images.batch(positions, dataclasses.replace(bundle.spec, channels=images.channels))
    if bundle.spec.channels != pixels.shape[1]:
        pixels = pixels.repeat(1, bundle.spec.channels, 1, 1)  # gray digits as colour: R = G = B
    return to_model_input(pixels, bundle.spec)


def _accuracy(bundle: Bundle, model: torch.nn.Module, images, positions: np.ndarray) -> float:
    with torch.no_grad():
        predicted = model.eval()(_batch(bundle, images, positions)).argmax(1)
    truth = [images.classes[int(k)] for k in images.labels[positions]]
    return float(np.mean([bundle.classes[int(p)] == t for p, t in zip(predicted, truth, strict=True)]))


def _one_step(bundle: Bundle, images, positions: np.ndarray) -> torch.nn.Module:
    """One SGD step (lr 0.01, train mode, BatchNorm on batch statistics) on labelled real images."""
    model = copy.deepcopy(bundle.model).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    targets = torch.tensor([bundle.classes.index(images.classes[int(k)]) for k in images.labels[positions]])
    loss = torch.nn.functional.cross_entropy(model(_batch(bundle, images, positions)), targets)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return model.eval()


EXACT_OPERATIONS = {
    # the synthetic probe is the issue's case: the old relu chain took its BatchNorm statistics from it
    "deeper relu": lambda b, p: deepen(b, "layer3", block="relu", probe=Probe.synthetic((16, 16), count=32)),
    "deeper residual": lambda b, p: deepen(b, "layer2", block="residual", probe=p),
    "widen": lambda b, p: widen(b, "layer1.0.conv1", 80, probe=p),
    "channels 1→3": lambda b, p: rechannel(b, 3, probe=p),
    "classes": lambda b, p: reclass(b, add=["extra"], probe=p),
}


@pytest.mark.parametrize("operation", list(EXACT_OPERATIONS))
def test_every_exact_operation_survives_one_training_step_on_real_images(tiny_run, digits, operation):
    """Train one step after the surgery and after none: accuracy stays within a point of the original's."""
    original = tiny_run.bundle
    rng = np.random.default_rng(0)
    order = rng.permutation(len(digits))
    train, test = order[:64], order[64:664]
    probe = draw_probe(digits, 32, tuple(original.spec.size), seed=1)
    step = EXACT_OPERATIONS[operation](original, probe)
    before = _accuracy(original, original.model, digits, test)
    assert before > 0.5  # the model knows the digits, so a broken one would show
    assert _accuracy(step.bundle, step.bundle.model, digits, test) == pytest.approx(before, abs=1e-9)
    torch.manual_seed(0)
    reference = _accuracy(original, _one_step(original, digits, train), digits, test)
    after = _accuracy(step.bundle, _one_step(step.bundle, digits, train), digits, test)
    assert abs(after - reference) <= 0.01, (operation, before, reference, after)
    assert step.verdict == "exact", step.certificate.line()
    assert step.certificate.train_forward_delta is not None
    if operation == "classes":  # another class set: each model's loss differs, so the step is not compared
        assert step.certificate.step_top1_agreement is None and "differs by design" in step.certificate.step_note
    else:
        assert step.certificate.step_top1_agreement is not None


def test_the_relu_block_is_the_identity_in_train_mode_and_records_its_kind(tiny_run, digits):
    step = deepen(tiny_run.bundle, "layer3", probe=draw_probe(digits, 16, (16, 16)))
    x = _batch(tiny_run.bundle, digits, np.arange(32))
    old = copy.deepcopy(tiny_run.bundle.model).train()
    new = copy.deepcopy(step.bundle.model).train()
    with torch.no_grad():
        assert torch.allclose(old(x), new(x), atol=1e-5)  # batch statistics: the old relu chain failed here
    assert step.bundle.architecture.edits[-1]["block"] == "relu-residual"


def test_a_legacy_relu_chain_bundle_still_rebuilds_as_recorded():
    """Bundles from before issue 20 record block "relu" (Conv+BN+ReLU); they load as that chain."""
    from graft.models.edits import ConvBnRelu
    from graft.models.factory import build_model

    _model, arch, spec, _ = create_model("resnet10t", 3, input_mode="fold", size=16)
    edit = {
        "op": "insert",
        "after": "backbone.layer3",
        "block": "relu",
        "channels": 256,
        "name": "backbone.layer3.deeper",
    }
    rebuilt = build_model(dataclasses.replace(arch, edits=[edit]), spec)
    assert isinstance(rebuilt.get_submodule("backbone.layer3.deeper"), ConvBnRelu)


def _without_eights_and_nines(tiny_run) -> Bundle:
    return reclass(tiny_run.bundle, drop=["8", "9"], probe=Probe.synthetic((16, 16), count=4)).bundle


def test_a_broken_imprint_is_not_certified_exact_and_info_shows_it(tiny_run, digits):
    """Imprinting from images of the new classes only makes them win everywhere: the verdict must say so."""
    old = _without_eights_and_nines(tiny_run)
    only_new = digits.subset(np.flatnonzero(np.isin(digits.labels, [8, 9])))
    probe = draw_probe(digits, 64, (16, 16), seed=3)
    step = reclass(old, add=["8", "9"], imprint=only_new, probe=probe)
    certificate = step.certificate
    # Independent measure: on probe images of kept classes, does the new model still predict what the old did?
    with torch.no_grad():
        kept = [i for i, label in enumerate(probe.labels) if label in old.classes]
        inputs = to_model_input(probe.images[kept], old.spec)
        old_top = [old.classes[int(k)] for k in old.model.eval()(inputs).argmax(1)]
        new_top = [step.bundle.classes[int(k)] for k in step.bundle.model.eval()(inputs).argmax(1)]
    agreement = float(np.mean([a == b for a, b in zip(old_top, new_top, strict=True)]))
    assert agreement < 0.9  # the imprint really is broken here
    assert certificate.old_class_images == len(kept)
    assert certificate.old_class_agreement == pytest.approx(agreement)
    assert certificate.verdict == "breaking"


def test_class_change_certificate_is_saved_and_shown_by_info(tiny_run, digits, tmp_path):
    old = _without_eights_and_nines(tiny_run)
    only_new = digits.subset(np.flatnonzero(np.isin(digits.labels, [8, 9])))
    step = reclass(old, add=["8", "9"], imprint=only_new, probe=draw_probe(digits, 32, (16, 16), seed=3))
    step.save(tmp_path / "more")
    saved = graft.load(tmp_path / "more")
    shown = "\n".join(_describe(saved.path, saved.record(), saved.exports, {}))
    assert "old predictions kept on" in shown and "old-class images" in shown
    assert "probe 32 digits images; old top-1 in" in shown
    assert "train mode max |Δlogit|" in shown
    assert graft.load(tmp_path / "more").provenance.surgery[-1].verdict == "breaking"


def _collapsed_bundle() -> Bundle:
    """A random 1-channel model whose first class wins every image (a huge bias)."""
    torch.manual_seed(0)
    model, arch, spec, _ = create_model("resnet10t", 3, input_mode="fold", size=16)
    with torch.no_grad():
        model.classifier().bias.copy_(torch.tensor([50.0, 0.0, 0.0]))
    return Bundle(model.eval(), arch, spec, ["a", "b", "c"])


def test_a_probe_in_one_class_cannot_certify_approximate(tmp_path):
    bundle = _collapsed_bundle()
    result = reshape(bundle, None, size=24, size_mode="resample", probe_count=16)
    certificate = result.certificates[0]
    assert certificate.probe_classes == {"a": 16}
    assert certificate.probe_collapsed and certificate.warnings
    assert certificate.verdict in ("unverified", "breaking")
    with pytest.raises(GraftError, match="not approximate"):
        reshape(bundle, tmp_path / "x", size=24, size_mode="resample", probe_count=16, require="approximate")
    assert not (tmp_path / "x").exists()


def test_the_bundles_own_data_is_the_default_probe(tiny_run):
    result = reshape(tiny_run.bundle.path, None, size=24, size_mode="resample", probe_count=32)
    certificate = result.certificates[0]
    assert certificate.probe.startswith("digits")
    assert certificate.probe_count == 32 and len(certificate.probe_classes) >= 5


def test_exact_needs_a_relative_bound_as_well(tiny_run):
    """With logits of scale 1e-7 every change is below 1e-4: only a bound relative to the logits can tell."""
    bundle = tiny_run.bundle
    model = copy.deepcopy(bundle.model)
    with torch.no_grad():
        model.classifier().weight.mul_(1e-7)
        model.classifier().bias.mul_(1e-7)
    tiny = dataclasses.replace(bundle, model=model, path=None)
    probe = Probe.synthetic((24, 24), count=16)
    resized = resize_input(tiny, 24, mode="resample", probe=probe).certificate
    assert resized.max_abs_logit_delta < 1e-4  # the absolute bound alone would call it exact
    assert resized.max_abs_logit_delta > 0
    assert resized.verdict != "exact"
    assert widen(tiny, "layer1.0.conv1", 80, probe=probe).verdict == "exact"  # exact stays exact at any scale


def test_require_checks_every_step(tiny_run, tmp_path):
    """Resize away and back: the chain is exact end to end, but each step is not; --require exact refuses."""
    probe = Probe.synthetic((24, 24), count=8)
    step = resize_input(tiny_run.bundle, 24, mode="resample", probe=probe).then(resize_input, 16, mode="resample")
    assert step.verdict == "exact" and step.certificates[0].verdict != "exact"
    with pytest.raises(GraftError, match="not exact"):
        step.save(tmp_path / "back", require="exact")
    assert not (tmp_path / "back").exists()


@pytest.mark.parametrize("layer", ["conv1", "layer2.0.downsample.0"])
def test_widening_into_a_residual_sum_widens_the_stream_exactly(tmp_path, layer):
    """Refused before issue 18 ("reaches an addition"); now the whole residual stream is co-widened."""
    model, arch, spec, _ = create_model("resnet18", 3, input_mode="fold", size=32)
    bundle = Bundle(model.eval(), arch, spec, ["a", "b", "c"])
    result = reshape(bundle, tmp_path / "w", widen={layer: 256}, probe_count=4)
    assert result.verdict == "exact"
    assert result.certificates[0].details["residual_sums"] >= 2


@pytest.mark.parametrize("size", [0, 1])
def test_sizes_below_the_real_minimum_are_refused_in_one_line(tiny_run, tmp_path, size, capsys):
    from graft.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["surgery", str(tiny_run.bundle.path), "-o", str(tmp_path / "s"), "--size", str(size)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "use --size 2 or more" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "s").exists()
    assert reshape(tiny_run.bundle, None, size=2, probe_count=4).bundle.spec.size == (2, 2)


def test_the_source_is_never_overwritten_and_outputs_are_checked_first(tiny_run, tmp_path, monkeypatch, capsys):
    import shutil

    source = tmp_path / "src"
    shutil.copytree(tiny_run.bundle.path, source)
    weights = (source / "model.safetensors").read_bytes()
    with pytest.raises(GraftError, match="never modifies its source"):
        reshape(source, source, channels=3, overwrite=True)
    with pytest.raises(GraftError, match="never modifies its source"):
        reshape(source / ".", tmp_path, channels=3, overwrite=True)
    assert (source / "model.safetensors").read_bytes() == weights
    (tmp_path / "taken").mkdir()
    from rich.console import Console

    printed = io.StringIO()
    with pytest.raises(GraftError, match="already exists"):
        reshape(source, tmp_path / "taken", channels=3, console=Console(file=printed))
    assert printed.getvalue() == ""  # refused before any certificate was computed
    monkeypatch.chdir(tmp_path)
    reshape("src", "out", channels=3, probe_count=4)
    parent = graft.load(tmp_path / "out").provenance.surgery[-1].parent
    assert parent is not None and os.path.isabs(parent) and parent == str(source.resolve())


def test_certificates_written_before_issue_20_still_read_and_show():
    """A v2 record from before: no probe spread, no train-mode fields, verdicts of three levels, relative parent."""
    from graft.cli.bundle import _certificate_lines
    from graft.record import SurgeryEntry

    old_step = {
        "operation": "deeper: relu block after layer3",
        "verdict": "exact",
        "max_abs_logit_delta": 2.6e-7,
        "top1_agreement": 1.0,
        "logit_scale": 9.5,
        "probe": "synthetic",
        "probe_count": 64,
        "compared_classes": 10,
        "new_class_wins": 0.0,
        "views": "both models see the same images",
        "details": {},
    }
    entry = SurgeryEntry.model_validate(
        {"at": "2026-01-01T00:00:00+00:00", "parent": "a", "verdict": "exact", "steps": [old_step]}
    )
    shown = "\n".join(_certificate_lines(entry.steps[0]))
    assert "exact" in shown and "2.60e-07" in shown
    assert "class spread not recorded" in shown and "train mode not certified" in shown
    assert SurgeryEntry.model_validate({**entry.model_dump(), "verdict": "unverified"}).verdict == "unverified"
