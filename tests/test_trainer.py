"""graft.Trainer: in-memory arrays, callbacks that watch and stop, one-line data errors, and the same weights as
graft.train (one training path)."""

from __future__ import annotations

import io
import json
import os
import signal

import numpy as np
import pytest
import torch
from rich.console import Console

import graft
from cli_helpers import run_cli
from graft.data.sources import load_digits_source, load_splits
from graft.errors import GraftError, Interrupted

TINY = dict(
    model="test_resnet", input_mode="fold", size=16, batch_size=16, workers=0, lr=3e-3, precision="fp32", threads=1
)
CLASSES = ["cat", "dog", "fox"]


def _arrays(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 12, 12), dtype=np.uint8), np.arange(n) % 3


def _quiet() -> Console:
    return Console(file=io.StringIO(), width=200)


def _run(tmp_path, name: str, console: Console | None = None, **settings) -> graft.Trainer:
    return graft.Trainer(
        **{**TINY, **settings},
        run_dir=str(tmp_path / name),
        output=str(tmp_path / name / "bundle"),
        console=console or _quiet(),
    )


def _same(a: torch.nn.Module, b: torch.nn.Module) -> None:
    left, right = a.state_dict(), b.state_dict()
    assert left.keys() == right.keys()
    different = [k for k in left if not torch.equal(left[k], right[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


class Recorder(graft.Callback):
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def on_train_begin(self, trainer):
        self.calls.append(("begin", trainer.model is not None))

    def on_epoch_end(self, trainer, record):
        self.calls.append(("epoch", record["epoch"], len(trainer.history)))

    def on_train_end(self, trainer, result):
        self.calls.append(("end", result.bundle.path is not None))


@pytest.fixture(scope="module")
def array_run(tmp_path_factory):
    """Two epochs on 60 random 12×12 images of 3 classes, with a test set: (trainer, recorder)."""
    recorder = Recorder()
    trainer = _run(
        tmp_path_factory.mktemp("arrays"), "run", data=_arrays(60), classes=CLASSES, test=_arrays(15, seed=1),
        epochs=2, callbacks=[recorder],
    )  # fmt: skip
    trainer.fit()
    return trainer, recorder


def test_callbacks_see_every_epoch_on_arrays_and_the_bundle_says_where_the_data_came_from(array_run):
    trainer, recorder = array_run
    assert recorder.calls == [("begin", True), ("epoch", 1, 1), ("epoch", 2, 2), ("end", True)]
    assert [record["epoch"] for record in trainer.history] == [1, 2] == [r["epoch"] for r in trainer.result.history]
    assert trainer.model is trainer.bundle.model and trainer.bundle.classes == CLASSES
    assert trainer.bundle.metrics["test_acc"] is not None
    data = graft.load(trainer.bundle.path).provenance.data
    assert data.source is None and (data.train, data.valid, data.test) == (48, 12, 15)
    memory = data.in_memory
    assert memory["kind"] == "arrays" and memory["shape"] == [60, 12, 12] and memory["test_shape"] == [15, 12, 12]
    assert memory["classes"] == 3 and memory["split_seed"] == 0 and memory["digest"].startswith("sha256:")


def test_eval_of_an_array_bundle_without_data_asks_for_data_in_one_line(array_run, capsys):
    trainer, _ = array_run
    code, _, err = run_cli(["eval", str(trainer.bundle.path)], capsys)
    assert code == 2 and "in-memory arrays (60, 12, 12), 3 classes, split seed 0; pass --data" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    code, out, _ = run_cli(["info", str(trainer.bundle.path)], capsys)
    assert code == 0 and "trained on  in-memory arrays (60, 12, 12), 3 classes, split seed 0: 48 train" in out


class StopAfterOne(graft.Callback):
    def __init__(self, how: str) -> None:
        self.how = how

    def on_epoch_end(self, trainer, record):
        if self.how == "flag":
            trainer.stop_training = True
            return None
        return True


@pytest.mark.parametrize("how", ["return", "flag"])
def test_a_callback_stops_training_after_epoch_one_of_three(how, tmp_path):
    recorder, console = Recorder(), _quiet()
    trainer = _run(tmp_path, "stop", console, data=_arrays(48), epochs=3, callbacks=[StopAfterOne(how), recorder])
    result = trainer.fit()
    assert [r["epoch"] for r in result.history] == [1] and recorder.calls[1:] == [("epoch", 1, 1), ("end", True)]
    assert (tmp_path / "stop" / "bundle" / "graft.json").is_file()
    assert json.loads((tmp_path / "stop" / "metrics.jsonl").read_text().splitlines()[-1])["epoch"] == 1
    assert result.bundle.metrics["test_acc"] is None and result.bundle.provenance.data.test == 0
    printed = console.file.getvalue()
    assert "stopped by" in printed and "after epoch 1/3" in printed and "no test set was given" in printed


def _bad(**change):
    x, y = _arrays(30)
    settings = {"x": x, "y": y, "classes": None, **change}
    return (settings["x"], settings["y"]), settings["classes"]


@pytest.mark.parametrize(
    ("data", "classes", "message"),
    [
        (*_bad(x=_arrays(30)[0].astype(np.float32)), "x must be a uint8 array of images, got dtype float32"),
        (*_bad(x=np.zeros((30, 3, 12, 12), np.uint8)), "channels first? x.transpose(0, 2, 3, 1)"),
        (*_bad(x=np.zeros((30, 12), np.uint8)), "x must be shaped (N, H, W) or (N, H, W, C)"),
        (*_bad(y=np.arange(29) % 3), "one integer label per image: 30 images"),
        (*_bad(y=(np.arange(30) % 3).astype(float)), "y must hold integer class indices, got dtype float64"),
        (*_bad(y=np.arange(30) % 3 - 1), "y must lie in 0..1 (2 classes), found -1..1"),
        (*_bad(classes=["a", "b"]), "y must lie in 0..1 (2 classes), found 0..2"),
        (*_bad(y=np.zeros(30, np.int64)), "y has 1 class(es); a classifier needs at least 2"),
        (["not", "arrays"], None, "must be a uint8 array"),
        (np.zeros((30, 12, 12), np.uint8), None, "data must be a source name"),
    ],
)
def test_bad_arrays_are_one_line_errors(data, classes, message, tmp_path):
    with pytest.raises(GraftError) as caught:
        _run(tmp_path, "bad", data=data, classes=classes)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"data": _arrays(30), "callbacks": [lambda trainer, record: None]}, "has none of on_train_begin"),
        ({"data": "digits", "test": _arrays(30)}, "test= and classes= go with in-memory data"),
        ({"data": _arrays(30), "test": _arrays(9)[0]}, "test must be (x, y) numpy arrays or an ImageSet"),
        ({"data": _arrays(30), "test": (np.zeros((9, 12, 12, 3), np.uint8), np.arange(9) % 3)}, "channels"),
    ],
)
def test_misplaced_keywords_are_one_line_errors(settings, message, tmp_path):
    with pytest.raises(GraftError) as caught:
        _run(tmp_path, "bad", **settings)
    assert message in str(caught.value) and "\n" not in str(caught.value)


@pytest.fixture(scope="module")
def digits_reference(tmp_path_factory):
    """graft.train on the digits source: the weights every route through the Trainer must reproduce."""
    out = tmp_path_factory.mktemp("digits")
    return graft.train(
        data="digits", **TINY, epochs=1, max_train=256, run_dir=str(out / "run"), output=str(out / "bundle")
    )


def _digits_as(kind: str) -> dict:
    if kind == "source":
        return {"data": "digits"}
    if kind == "splits":
        return {"data": load_splits("digits")}
    pool, test = load_digits_source()  # the source's own images, handed over as arrays: the same split follows
    return {"data": (pool.array[pool.index, ..., 0], pool.labels), "test": (test.array[test.index], test.labels)}


@pytest.mark.parametrize("kind", ["source", "arrays", "splits"])
def test_trainer_fit_gives_the_weights_of_graft_train(kind, digits_reference, tmp_path):
    result = _run(tmp_path, kind, **_digits_as(kind), epochs=1, max_train=256).fit()
    _same(result.bundle.model, digits_reference.bundle.model)
    assert result.bundle.metrics["test_acc"] == digits_reference.bundle.metrics["test_acc"]
    assert [r["train_loss"] for r in result.history] == [r["train_loss"] for r in digits_reference.history]


class Interrupt(graft.Callback):
    def on_epoch_end(self, trainer, record):
        os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C: the run checkpoints early in epoch 2 and stops


def test_an_interrupted_array_run_resumes_only_with_the_same_data(array_run, tmp_path, capsys):
    trainer, _ = array_run
    settings = dict(data=_arrays(60), classes=CLASSES, test=_arrays(15, seed=1))
    with pytest.raises(Interrupted, match=r"continue with graft\.Trainer\(resume="):
        _run(tmp_path, "run", **settings, epochs=2, callbacks=[Interrupt()]).fit()
    run = str(tmp_path / "run")
    with pytest.raises(GraftError, match="is not the data"):
        graft.Trainer(resume=run, data=_arrays(60, seed=5), classes=CLASSES, test=_arrays(15, seed=1))
    code, _, err = run_cli(["train", "--resume", run], capsys)
    assert code == 2 and "trained on in-memory data (arrays (60, 12, 12), 3 classes, split seed 0)" in err
    resumed = graft.Trainer(resume=run, **settings, console=_quiet()).fit()
    _same(resumed.bundle.model, trainer.bundle.model)
