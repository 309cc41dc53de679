"""Model surgery through the API and the CLI: certificates, provenance, size rules, imprinting, bad requests."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import graft
from graft.cli import main
from graft.data.sources import load_everything
from graft.errors import GraftError
from graft.surgery import reshape
from graft.surgery.resize import resample_flatten_head


def run_cli(*args: str) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    return exit_info.value.code


def test_the_user_story_chain_is_certified_and_saved(tiny_run, tmp_path, capsys):
    out = tmp_path / "rgb"
    code = run_cli(
        "surgery",
        str(tiny_run.bundle.path),
        "-o",
        str(out),
        "--channels",
        "3",
        "--insert-after",
        "layer3",
        "--widen",
        "layer1.0.conv1=80",
        "--add-classes",
        "extra",
        "--probe",
        "digits",
        "--json",
    )
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["verdict"] == "exact"
    assert [s["verdict"] for s in report["steps"]] == ["exact"] * 4
    assert report["steps"][0]["probe"] == "digits"
    bundle = graft.load(out)
    assert bundle.spec.channels == 3 and bundle.classes[-1] == "extra"
    chain = bundle.provenance.surgery[-1]
    assert chain.parent == str(tiny_run.bundle.path) and len(chain.steps) == 4
    # Kept metrics would be wrong for the new class list: they move aside.
    assert bundle.metrics == {} and bundle.provenance.metrics_before_surgery
    assert run_cli("info", str(out)) == 0
    shown = capsys.readouterr().out
    assert "surgery" in shown and "channels 1 → 3" in shown and "exact" in shown


def test_colour_bundle_predicts_a_colour_image_as_the_old_one_its_gray_version(tiny_run, tmp_path):
    new = reshape(tiny_run.bundle.path, tmp_path / "rgb", channels=3).bundle
    rng = np.random.default_rng(0)
    colour = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    old_input = graft.load(tiny_run.bundle.path).model_input(colour)  # the old spec takes the luminance
    with torch.no_grad():
        old_logits = graft.load(tiny_run.bundle.path).model(old_input)
        new_logits = graft.load(tmp_path / "rgb").model(new.model_input(colour))
    assert torch.allclose(old_logits, new_logits, atol=1e-4)


def test_a_chain_of_surgeries_is_kept_in_order(tiny_run, tmp_path):
    reshape(tiny_run.bundle.path, tmp_path / "a", insert_after="layer2", probe_count=4)
    reshape(tmp_path / "a", tmp_path / "b", insert_after="layer3", block="residual", probe_count=4)
    bundle = graft.load(tmp_path / "b")
    assert len(bundle.provenance.surgery) == 2
    assert [e["op"] for e in bundle.architecture.edits] == ["insert", "insert"]
    assert bundle.provenance.surgery[0].steps[0]["operation"].startswith("deeper")


def test_size_change_is_certified_as_inexact_and_keeps_every_weight(tiny_run, tmp_path):
    result = reshape(
        tiny_run.bundle.path, tmp_path / "big", size=32, size_mode="resample", probe="digits", probe_count=32
    )
    assert result.bundle.spec.size == (32, 32)
    assert result.certificates[0].verdict in ("approximate", "breaking")
    old = tiny_run.bundle.model.state_dict()
    assert all(torch.equal(old[k], v) for k, v in result.bundle.model.state_dict().items())


def test_flatten_head_resampling_keeps_the_sum_over_positions():
    """For a weight that is constant over positions, an upsampled feature map gives exactly the old logit."""
    weight = torch.randn(3, 4, 1, 1).expand(3, 4, 5, 5).reshape(3, -1)
    features = torch.rand(4, 5, 5)
    upsampled = torch.nn.functional.interpolate(features[None], size=(10, 10), mode="nearest")[0]
    new = resample_flatten_head(weight, (4, 5, 5), (4, 10, 10))
    assert new.shape == (3, 400)
    assert torch.allclose(weight @ features.flatten(), new @ upsampled.flatten(), atol=1e-5)


def test_the_default_size_change_is_the_exact_size_stem(tiny_run, capsys):
    """The surgery story bench put the stem ahead after fine-tuning in every seed, so it is the default (issue 18)."""
    result = reshape(tiny_run.bundle.path, None, size=24, probe="digits", probe_count=16)
    assert result.certificates[0].operation.endswith("(size stem)") and result.verdict == "exact"
    assert result.bundle.model.size_stem is not None
    with pytest.raises(SystemExit):
        main(["surgery", "--help"])
    assert "stem (the default)" in " ".join(capsys.readouterr().out.split())


def test_flatten_head_bundle_changes_size(tmp_path):
    result = graft.train(
        data="digits",
        model="resnet10t",
        head="flatten",
        size=32,
        epochs=1,
        max_train=128,
        batch_size=32,
        run_dir=str(tmp_path / "run"),
        output=str(tmp_path / "flat"),
        workers=0,
    )
    new = reshape(
        result.bundle.path, tmp_path / "flat64", size=64, size_mode="resample", probe="digits", probe_count=16
    )
    assert graft.load(tmp_path / "flat64").model.head.fc.in_features == 4 * new.bundle.model.head.fc.in_features // 4
    assert new.certificates[0].details["resampled"] == ["head.fc.weight"]


def test_vit_position_embeddings_are_resampled(tmp_path):
    from graft.bundle import Bundle
    from graft.models.factory import create_model

    model, arch, spec, _ = create_model("test_vit", 3, input_mode="fold", size=32)
    bundle = Bundle(model.eval(), arch, spec, ["a", "b", "c"])
    result = reshape(bundle, tmp_path / "vit64", size=64, size_mode="resample", probe_count=4)
    assert result.certificates[0].details["resampled"] == ["backbone.pos_embed"]
    loaded = graft.load(tmp_path / "vit64")
    assert loaded.architecture.timm_kwargs["img_size"] == [64, 64]


def test_imprinted_classes_recognise_their_examples(tmp_path):
    """A model trained without digits 8 and 9 learns them from their mean features alone."""
    digits = load_everything("digits")
    known = np.flatnonzero(digits.labels < 8)
    folder = tmp_path / "digits"
    from PIL import Image

    for i in range(len(digits)):
        label = str(int(digits.labels[i]))
        (folder / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(digits.image(i)[:, :, 0]).save(folder / label / f"{i}.png")
    for name in ("8", "9"):
        (tmp_path / "eight" / name).parent.mkdir(parents=True, exist_ok=True)
    import shutil

    base = tmp_path / "base"
    for label in range(8):
        shutil.copytree(folder / str(label), base / str(label))
    assert len(known) > 1000
    trained = graft.train(
        data=f"folder:{base}",
        model="resnet10t",
        input_mode="fold",
        size=16,
        epochs=2,
        batch_size=32,
        run_dir=str(tmp_path / "run"),
        output=str(tmp_path / "b8"),
        workers=0,
    )
    new = reshape(trained.bundle.path, tmp_path / "b10", add_classes=["8", "9"], imprint=f"folder:{folder}")
    details = new.certificates[0].details
    assert details["imprinted"] == ["8", "9"]
    # Kept logits are exact, but imprinted classes take some old-class images: never certified "exact" (issue 20).
    certificate = new.certificates[0]
    assert certificate.old_class_agreement is not None and certificate.old_class_images > 0
    assert (new.verdict == "exact") == (certificate.old_class_agreement == 1.0)
    result = graft.evaluate(tmp_path / "b10", data=f"folder:{folder}", split="all")
    recall = {row["class"]: row["recall"] for row in result.per_class()}
    assert recall["8"] > 0.3 and recall["9"] > 0.3  # chance is 0.1; zero-initialised rows give 0
    assert result.accuracy > 0.7


def test_recalibration_moves_batchnorm_statistics_only(tiny_run, tmp_path):
    result = reshape(tiny_run.bundle.path, tmp_path / "recal", recalibrate="digits", probe_count=8)
    old, new = tiny_run.bundle.model.state_dict(), result.bundle.model.state_dict()
    changed = {k for k in old if not torch.equal(old[k], new[k])}
    assert changed and all(k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in changed)
    assert result.certificates[0].details["images"] > 0


def test_architecture_transfer_reports_what_moved(tiny_run, tmp_path):
    result = reshape(tiny_run.bundle.path, tmp_path / "r18", architecture="resnet18", probe_count=4)
    transfer = result.certificates[0].details["transfer"]
    assert transfer["loaded"] and transfer["skipped"]
    assert graft.load(tmp_path / "r18").architecture.timm_name == "resnet18"


def test_require_exact_writes_nothing_for_an_inexact_surgery(tiny_run, tmp_path):
    with pytest.raises(GraftError, match="nothing written"):
        reshape(tiny_run.bundle.path, tmp_path / "no", size=32, size_mode="resample", probe_count=8, require="exact")
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--insert-after", "layer9"], "no layer named 'layer9'"),
        (["--widen", "layer1.0.bn2=99"], "not a plain convolution"),
        (["--widen", "layer1.0.conv1"], "LAYER=WIDTH"),
        (["--classes", "x,y"], "keeps none"),
        (["--drop-classes", "nope"], "no such class"),
        (["--channels", "1"], "already takes 1 channel"),
        (["--size", "16"], "already takes 16×16"),
        (["--block", "fancy", "--insert-after", "layer2"], "unknown block"),
        (["--probe", "nosuch"], "unknown data source"),
        ([], "no change requested"),
    ],
)
def test_bad_requests_are_one_line_and_write_nothing(tiny_run, tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert run_cli("surgery", str(tiny_run.bundle.path), "-o", str(out), *args) == 2
    err = capsys.readouterr().err
    assert message in " ".join(err.split()) and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_existing_output_needs_force(tiny_run, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli("surgery", str(tiny_run.bundle.path), "-o", str(out), "--channels", "3") == 0
    assert run_cli("surgery", str(tiny_run.bundle.path), "-o", str(out), "--channels", "3") == 2
    assert "already exists" in capsys.readouterr().err
    assert run_cli("surgery", str(tiny_run.bundle.path), "-o", str(out), "--channels", "3", "--force") == 0


def test_info_lists_layers_with_shapes(tiny_run, capsys):
    assert run_cli("info", str(tiny_run.bundle.path), "--layers") == 0
    shown = capsys.readouterr().out
    assert "layer2" in shown and "(128, 1, 1)" in shown


def test_training_continues_an_edited_bundle_with_its_architecture_and_spec(tiny_run, tmp_path):
    grown = reshape(tiny_run.bundle.path, tmp_path / "grown", channels=3, insert_after="layer3", drop_classes=["9"])
    result = graft.train(
        data="digits",
        weights=str(tmp_path / "grown"),
        epochs=1,
        max_train=64,
        batch_size=32,
        run_dir=str(tmp_path / "run"),
        output=str(tmp_path / "tuned"),
        workers=0,
    )
    tuned = graft.load(tmp_path / "tuned")
    assert tuned.architecture.edits == grown.bundle.architecture.edits
    assert tuned.spec == grown.bundle.spec and tuned.spec.channels == 3
    assert tuned.classes == [str(i) for i in range(10)]  # the data's classes; "9" came back, imprinted
    adapted = result.bundle.provenance.transfer.adapted[0]["how"]
    assert "9 kept" in adapted and "1 imprinted" in adapted
    parent = tuned.provenance.continued_from
    assert parent.bundle == str(tmp_path / "grown") and parent.surgery[0].verdict == "exact"


def test_other_settings_transfer_a_plain_bundle_but_refuse_an_edited_one(tiny_run, tmp_path):
    moved = graft.train(
        data="digits",
        weights=str(tiny_run.bundle.path),
        size=24,
        epochs=1,
        max_train=64,
        batch_size=32,
        run_dir=str(tmp_path / "moved"),
        workers=0,
    )
    assert moved.bundle.spec.size == (24, 24) and moved.bundle.provenance.continued_from is None
    assert moved.bundle.provenance.transfer.loaded
    reshape(tiny_run.bundle.path, tmp_path / "grown", insert_after="layer2", probe_count=4)
    with pytest.raises(GraftError, match="graft surgery"):
        graft.train(data="digits", weights=str(tmp_path / "grown"), size=32, run_dir=str(tmp_path / "r"))


def test_size_below_what_the_model_accepts_is_refused(tmp_path):
    from graft.bundle import Bundle
    from graft.models.factory import create_model

    model, arch, spec, _ = create_model("test_vit", 3, input_mode="fold", size=32)
    with pytest.raises(GraftError, match="below what test_vit accepts"):
        reshape(Bundle(model.eval(), arch, spec, ["a", "b", "c"]), tmp_path / "small", size=8, size_mode="resample")
    assert not (tmp_path / "small").exists()


def test_whole_chain_certificate_judges_the_final_model(tiny_run, tmp_path):
    """Size then recalibration: each step is certified, and the chain is judged original vs final."""
    result = reshape(
        tiny_run.bundle.path,
        tmp_path / "r",
        channels=3,
        size=24,
        size_mode="resample",
        recalibrate="digits",
        probe="digits",
    )
    assert [c.operation.split()[0] for c in result.certificates] == ["channels", "size", "recalibrate"]
    assert result.overall is not None and result.overall.operation == "whole chain"
    assert result.verdict == result.overall.verdict
    assert "luminance" in result.overall.views  # the channel step's views apply to the whole chain
    saved = graft.load(tmp_path / "r").provenance.surgery[-1]
    assert saved.overall["verdict"] == result.verdict
