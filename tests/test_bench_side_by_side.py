"""The side-by-side bench's arithmetic: each setting's ratio to Keras is taken within a round, then the median."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "densenet_side_by_side.py"


def _bench():
    spec = importlib.util.spec_from_file_location("densenet_side_by_side", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ratios_pair_each_round_with_its_own_keras_run():
    runs = {
        "keras reference": [{"img_per_s": 10.0, "img_per_cpu_s": 20.0}, {"img_per_s": 5.0, "img_per_cpu_s": 20.0}],
        "graft bf16": [{"img_per_s": 30.0, "img_per_cpu_s": 40.0}, {"img_per_s": 15.0, "img_per_cpu_s": 60.0}],
    }
    rows = {row["setting"]: row for row in _bench().summarise(runs)}
    # Each round's graft is set against that round's Keras: a slower Keras in round 2 changes the ratio.
    assert rows["graft bf16"]["vs_keras"] == 3.0
    assert rows["graft bf16"]["vs_keras_cpu"] == 2.5
    assert rows["keras reference"]["vs_keras"] == 1.0
    runs["keras reference"][1]["img_per_s"] = 15.0
    assert {row["setting"]: row for row in _bench().summarise(runs)}["graft bf16"]["vs_keras"] == 2.0
