"""Shared fixtures: the verified data beside the repository, and one tiny trained bundle."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_datasets() -> Path | None:
    """`$GRAFT_DATA` when it holds MNIST, else ../shared/datasets beside the repository."""
    for candidate in (os.environ.get("GRAFT_DATA"), REPO.parent / "shared" / "datasets"):
        if candidate and (Path(candidate) / "mnist" / "train-images-idx3-ubyte.gz").is_file():
            return Path(candidate)
    return None


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (pyproject's addopts run one worker per core), each worker and the processes it starts
    use one thread: two workers with two threads each on two cores spend their time in OpenMP spin-waits.
    Set before any test imports torch, which reads it once."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    root = shared_datasets()
    if root is None:
        pytest.skip("MNIST files not found: set GRAFT_DATA or put them in ../shared/datasets/mnist")
    return root


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A resnet10t trained for one short epoch on scikit-learn digits at 16×16 (a few seconds)."""
    import graft

    out = tmp_path_factory.mktemp("tiny")
    return graft.train(
        data="digits",
        model="resnet10t",
        input_mode="fold",
        size=16,
        epochs=2,
        batch_size=32,
        lr=3e-3,
        run_dir=str(out / "run"),
        output=str(out / "bundle"),
        workers=0,
    )


@pytest.fixture(scope="session")
def serve_bundle(tiny_run, tmp_path_factory) -> Path:
    """A copy of the tiny bundle with a checked ONNX export (the original stays as the other tests expect it)."""
    import shutil

    import graft

    path = tmp_path_factory.mktemp("serve") / "digits"
    shutil.copytree(tiny_run.bundle.path, path)
    graft.export(path, format="onnx")
    return path
