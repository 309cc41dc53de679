"""Data-parallel training: 2 CPU processes with gloo under torchrun follow a single-process run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

# test_vit has LayerNorm, not BatchNorm: each process normalising its half of the batch would differ by design.
FLAGS = [
    "--data", "digits", "--model", "test_vit", "--input-mode", "fold", "--size", "16", "--batch-size", "32",
    "--epochs", "2", "--lr", "0.001", "--workers", "0", "--max-train", "512", "--precision", "fp32",
]  # fmt: skip


def test_two_gloo_processes_match_one_process(tmp_path: Path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun is not installed beside this Python")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run(
        [sys.executable, "-m", "graft", "train", *FLAGS, "--threads", "2", "--run-dir", str(tmp_path / "one")],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert single.returncode == 0, single.stderr
    ddp = subprocess.run(
        [torchrun, "--standalone", "--nproc-per-node", "2", "-m", "graft", "train", *FLAGS,
         "--run-dir", str(tmp_path / "two")],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "2 processes" in ddp.stderr
    one = load_file(str(tmp_path / "one" / "bundle" / "model.safetensors"))
    two = load_file(str(tmp_path / "two" / "bundle" / "model.safetensors"))
    worst = max(float((one[k] - two[k]).abs().max()) for k in one)
    assert worst < 1e-4, f"largest weight difference {worst:.2e}"
    metrics_one = (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()
    metrics_two = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    assert len(metrics_one) == len(metrics_two) == 2, "only rank 0 writes, once per epoch"
    assert not list((tmp_path / "two").glob("rank*")), "no per-rank files"
