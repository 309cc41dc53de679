"""Training strategies: which parameters change, BatchNorm statistics under `transfer`, the feature cache,
discriminative learning rates, EMA, early stopping and the non-finite-loss guard."""

from __future__ import annotations

import pytest
import torch

import graft
from graft.errors import GraftError
from graft.models.factory import create_model
from graft.training.config import make_config
from graft.training.optim import group_factors, make_optimizer
from graft.training.strategy import parameter_roles

TINY = dict(data="digits", model="resnet10t", input_mode="fold", size=16, batch_size=32, workers=0, lr=3e-3)


def _train(tmp_path, name, **settings):
    return graft.train(**{**TINY, **settings}, run_dir=str(tmp_path / name), output=str(tmp_path / name / "bundle"))


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _changed(before: dict, after: dict) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}


def _roles(bundle) -> dict[str, str]:
    return parameter_roles(bundle.model)


def test_transfer_trains_only_the_head_and_keeps_batchnorm_statistics(tiny_run, tmp_path):
    parent = graft.load(tiny_run.bundle.path)
    result = _train(tmp_path, "transfer", weights=str(parent.path), strategy="transfer", epochs=2)
    changed = _changed(_state(parent.model), _state(result.bundle.model))
    roles = _roles(result.bundle)
    assert changed, "the head must train"
    assert {roles.get(name, "buffer") for name in changed} == {"head"}, "only head parameters change"
    buffers = [k for k in parent.model.state_dict() if "running_" in k]
    assert buffers and not _changed(_state(parent.model), _state(result.bundle.model)) & set(buffers)


def test_feature_cache_equals_training_through_the_frozen_backbone(tiny_run, tmp_path):
    """Same batches, same head: the cache must not change the result beyond float rounding (float32)."""
    common = dict(weights=str(tiny_run.bundle.path), strategy="transfer", epochs=2, precision="fp32")
    cached = _train(tmp_path, "cached", **common)
    direct = _train(tmp_path, "direct", feature_cache=False, **common)
    for name, tensor in _state(cached.bundle.model).items():
        assert torch.allclose(tensor.float(), _state(direct.bundle.model)[name].float(), atol=1e-5), name


def test_finetune_trains_everything(tiny_run, tmp_path):
    parent = graft.load(tiny_run.bundle.path)
    result = _train(tmp_path, "finetune", weights=str(parent.path), epochs=1)
    params = dict(parent.model.named_parameters())
    assert set(params) <= _changed(_state(parent.model), _state(result.bundle.model))


def test_freeze_unfreeze_keeps_the_backbone_for_head_epochs_then_trains_it(tiny_run, tmp_path):
    parent = graft.load(tiny_run.bundle.path)
    snapshots = {}
    result = graft.train(
        **{**TINY, "weights": str(parent.path)},
        strategy="freeze-unfreeze",
        head_epochs=1,
        epochs=2,
        run_dir=str(tmp_path / "fu"),
        on_epoch=lambda record, model, spec: snapshots.setdefault(record["epoch"], _state(model)),
    )
    roles = _roles(result.bundle)
    after_head = _changed(_state(parent.model), snapshots[1])
    assert {roles.get(name, "buffer") for name in after_head} == {"head"}, "epoch 1: backbone (and its BN) frozen"
    backbone = {name for name, role in roles.items() if role == "backbone"}
    assert backbone <= _changed(snapshots[1], snapshots[2]), "epoch 2: the backbone trains"


def test_freeze_unfreeze_schedule_and_discriminative_rates():
    config = make_config(strategy="freeze-unfreeze", epochs=3, head_epochs=1, lr=1e-2, warmup_epochs=0)
    head, backbone = group_factors(config, 10, "head"), group_factors(config, 10, "backbone")
    assert all(backbone(step) == 0 for step in range(10)), "the backbone waits during the frozen epochs"
    assert head(0) > 0 and backbone(10) == pytest.approx(head(10)), "both restart together when unfreezing"
    model, *_ = create_model("resnet10t", 3, size=16)
    groups = make_optimizer(model, config).param_groups
    rates = {group["role"]: group["lr"] for group in groups}
    assert rates == {"head": 1e-2, "backbone": pytest.approx(1e-3)}, "backbone LR = lr × 0.1 by default"
    transfer = make_optimizer(model, make_config(strategy="transfer")).param_groups
    assert {group["role"] for group in transfer} == {"head"}


def test_stem_trains_with_the_head_under_transfer(tmp_path):
    result = _train(tmp_path, "stem", input_mode="stem", strategy="transfer", epochs=1, max_train=256)
    roles = _roles(result.bundle)
    assert {name for name, role in roles.items() if role == "head" and name.startswith("stem.")}


def test_early_stopping_keeps_the_best_epoch(tmp_path):
    # transfer at a negligible learning rate: BatchNorm statistics and weights stay put, so nothing improves
    result = _train(tmp_path, "early", epochs=6, patience=1, lr=1e-9, max_train=256, ema=0.9, strategy="transfer")
    assert len(result.history) == 2, "no improvement after epoch 1: stop after one more"
    assert result.bundle.metrics["epoch"] == 1


def test_a_non_finite_loss_stops_with_a_clear_error(tmp_path):
    with pytest.raises(GraftError, match="training loss is"):
        _train(tmp_path, "nan", epochs=2, lr=1e12, max_train=256, weight_decay=0.0, optimizer="sgd")


def test_strategy_settings_are_checked():
    from graft.training.strategy import check_strategy

    with pytest.raises(GraftError, match="no epoch to unfreeze"):
        check_strategy(make_config(strategy="freeze-unfreeze", epochs=1))
    with pytest.raises(GraftError, match="strategy"):
        make_config(strategy="sometimes")


def test_augmentation_is_per_image_and_keeps_uint8():
    from graft.training.augment import make_augment

    augment = make_augment(make_config(augment="reference", rotate=15))
    images = torch.zeros(8, 1, 16, 16, dtype=torch.uint8)
    images[:, :, 4:12, 7:9] = 255
    out = augment(images)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    assert len({bytes(image.numpy()) for image in out}) > 1, "each image draws its own transform"
    assert make_augment(make_config()) is None


def test_non_finite_bf16_gradients_fall_back_to_float32(tmp_path, monkeypatch):
    """A bfloat16 kernel returning non-finite gradients must not end (or poison) the run: it goes on in float32."""
    from graft.training import runtime as runtime_module
    from graft.training import steps

    monkeypatch.setattr(runtime_module, "cpu_supports_bf16", lambda: True)
    calls = {"n": 0}
    real = steps._gradients_finite

    def flaky(optimizer):
        calls["n"] += 1
        return calls["n"] != 3 and real(optimizer)  # the third step's bf16 gradients "overflow"

    monkeypatch.setattr(steps, "_gradients_finite", flaky)
    result = _train(tmp_path, "fallback", epochs=1, max_train=256, precision="auto")
    how = result.bundle.provenance.runtime["how"]
    assert "float32 (after non-finite gradients in bfloat16)" in how
    assert all(torch.isfinite(t).all() for t in result.bundle.model.state_dict().values() if t.is_floating_point())
