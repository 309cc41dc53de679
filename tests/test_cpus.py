"""The default thread count: OMP_NUM_THREADS when set, else the CPUs this process may run on."""

from __future__ import annotations

import os

import pytest

from graft.cpus import available_cpus


def test_omp_num_threads_caps_the_default(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert available_cpus() == 3


@pytest.mark.parametrize("value", ["", "0", "-2", "two", " "])
def test_an_unusable_omp_num_threads_falls_back_to_the_affinity_mask(monkeypatch, value):
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    assert available_cpus() == len(os.sched_getaffinity(0))


def test_the_affinity_mask_not_the_machine_counts(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0})
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert available_cpus() == 1


def test_training_uses_it_by_default(monkeypatch):
    from graft.training.config import TrainConfig
    from graft.training.distributed import World
    from graft.training.runtime import resolve_runtime

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert resolve_runtime(TrainConfig(device="cpu"), World()).threads == 1
    assert resolve_runtime(TrainConfig(device="cpu", threads=2), World()).threads == 2
