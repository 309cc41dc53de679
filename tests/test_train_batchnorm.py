"""Stale BatchNorm statistics after a short run: detected, recalibrated when validation improves, never worse."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import graft
from graft.data.base import ArrayImages
from graft.evaluation import EvalResult
from graft.spec import InputSpec
from graft.training.batchnorm import recalibrate_if_stale

SHORT = dict(
    data="digits", model="resnet10t", input_mode="fold", size=16, epochs=1, batch_size=16, workers=0,
    max_train=160, max_valid=120, max_test=200, precision="fp32", threads=1, lr=3e-3,
)  # fmt: skip


def test_a_short_run_gets_its_batchnorm_statistics_recalibrated(tmp_path, capsys):
    # ten steps: the running statistics still mostly hold their initial 0 and 1
    stale = graft.train(**SHORT, recalibrate_bn=False, run_dir=str(tmp_path / "stale"))
    fixed = graft.train(**SHORT, run_dir=str(tmp_path / "fixed"))
    before, after = stale.bundle.metrics, fixed.bundle.metrics
    assert "bn_recalibrated" not in before  # switched off: not even checked
    assert after["bn_recalibrated"] is True
    assert after["bn_check_batch_stats_acc"] - after["bn_check_eval_acc"] >= 0.3
    assert after["valid_acc_before_recalibration"] == before["valid_acc"]  # the same weights before the fix
    assert after["valid_acc"] >= before["valid_acc"] + 0.3
    assert after["test_acc"] >= before["test_acc"] + 0.3 and after["test_acc"] >= 0.6, (before, after)
    err = " ".join(capsys.readouterr().err.split())
    assert "stale statistics; re-estimated on 160 training images" in err and "(kept)" in err
    assert "recalibrated on training images" in (tmp_path / "fixed" / "report.html").read_text()
    # the saved bundle holds the recalibrated statistics (the whole test split, not the run's 200-image sample)
    assert graft.evaluate(fixed.bundle.path).accuracy >= 0.6 > graft.evaluate(stale.bundle.path).accuracy


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.conv(x)).mean(dim=(2, 3)))


def _images(n: int = 32) -> ArrayImages:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (n, 8, 8, 1)).astype(np.uint8)
    labels = (pixels.reshape(n, -1).mean(axis=1) > 127).astype(np.int64)
    return ArrayImages("noise", pixels, labels, ["dark", "bright"])


def _result(accuracy: float) -> EvalResult:
    labels = np.zeros(100, np.int64)
    predicted = (np.arange(100) >= round(accuracy * 100)).astype(np.int64)
    return EvalResult(["a", "b"], labels, predicted, np.ones(100, np.float32), 0.5)


def test_recalibration_that_does_not_improve_validation_is_undone(monkeypatch):
    import graft.training.batchnorm as batchnorm

    # the real check runs (its buffers must come back too), and then reports statistics as stale
    real_check = batchnorm.check_batch
    monkeypatch.setattr(batchnorm, "check_batch", lambda *args: (real_check(*args), (0.1, 0.9))[1])
    torch.manual_seed(0)
    model = _Tiny()
    model.norm.running_mean.fill_(50.0)  # absurd statistics: eval mode is far from batch statistics
    model.norm.running_var.fill_(0.01)
    spec = InputSpec(size=(8, 8), channels=1, mode="fold", mean=(0.0,), std=(1.0,))
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    scores = iter([_result(0.6), _result(0.5)])  # validation says: worse after recalibration
    check = recalibrate_if_stale(
        model, spec, _images(), _images(), batch_size=8, workers=0, device=torch.device("cpu"),
        evaluate=lambda _: next(scores),
    )  # fmt: skip
    assert check is not None and check.images == 32 and not check.kept
    assert check.valid_before == 0.6 and check.valid_after == 0.5
    for key, value in model.state_dict().items():
        assert torch.equal(value, saved[key]), key  # every buffer back as it was
    assert not model.training

    scores = iter([_result(0.5), _result(0.9)])
    check = recalibrate_if_stale(
        model, spec, _images(), _images(), batch_size=8, workers=0, device=torch.device("cpu"),
        evaluate=lambda _: next(scores),
    )  # fmt: skip
    assert check is not None and check.kept and not torch.equal(model.norm.running_mean, saved["norm.running_mean"])
    assert check.metrics()["bn_recalibrated"] is True
