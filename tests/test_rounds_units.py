"""Rounds without training: metric formulas by hand, the gate, data selection and the mix: source."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from graft.data.sources import load_source, load_splits
from graft.errors import GraftError
from graft.rounds import gate, metrics, selection
from rounds_helpers import digit_folder

NAN = math.nan
# R[i, j]: model after round i on round j's test. Round 2 improved round 1 (0.95 > 0.90), round 3 forgot.
R = np.array(
    [
        [0.90, NAN, NAN],
        [0.95, 0.85, NAN],
        [0.70, 0.80, 0.95],
    ]
)


def test_metrics_by_hand():
    # after round 1: only its own accuracy; nothing to forget
    assert metrics.average_accuracy(R, 0) == pytest.approx(0.90)
    assert metrics.forgetting(R, 0) is None and metrics.backward_transfer(R, 0) is None
    # after round 2: ACC = (0.95 + 0.85) / 2; F = 0.90 - 0.95 (negative: it got better); BWT = +0.05
    assert metrics.average_accuracy(R, 1) == pytest.approx(0.90)
    assert metrics.forgetting(R, 1) == pytest.approx(-0.05)
    assert metrics.backward_transfer(R, 1) == pytest.approx(0.05)
    assert metrics.max_forgetting(R, 1) == pytest.approx(-0.05)
    # after round 3: ACC = (0.70 + 0.80 + 0.95) / 3 = 0.81667
    assert metrics.average_accuracy(R, 2) == pytest.approx(0.816666666)
    # Avalanche forgetting: first accuracy minus now: (0.90 - 0.70) and (0.85 - 0.80) → mean 0.125
    assert metrics.forgetting_per_round(R, 2) == pytest.approx([0.20, 0.05])
    assert metrics.forgetting(R, 2) == pytest.approx(0.125)
    assert metrics.backward_transfer(R, 2) == pytest.approx(-0.125)
    # best-previous forgetting: (max(0.90, 0.95) - 0.70) and (0.85 - 0.80) → mean 0.15
    assert metrics.max_forgetting(R, 2) == pytest.approx(0.15)
    summary = metrics.summary(R, 2)
    assert summary["average_accuracy"] == pytest.approx(0.816666666)


def test_matrix_from_ragged_rows():
    matrix = metrics.matrix_from_rows([[0.9], [0.95, 0.85], [0.7, 0.8, 0.95]])
    np.testing.assert_array_equal(np.isnan(matrix), np.isnan(R))
    np.testing.assert_allclose(np.nan_to_num(matrix), np.nan_to_num(R))


def _evidence(own=0.9, classes=3, average=0.9, forgetting=None, current_average=None) -> gate.Evidence:
    return gate.Evidence(own, classes, average, forgetting, current_average, "plain" if current_average else None)


def test_gate_forgetting_rule():
    limits = gate.Thresholds(max_forgetting=0.05)
    first = gate.decide(_evidence(), limits)
    assert first.promoted and first.why.startswith("first round") and first.refused_by == []
    refused = gate.decide(_evidence(forgetting=0.125), limits)
    assert not refused.promoted and refused.refused_by == ["max-forgetting"]
    assert "12.50%" in refused.why and "5.00%" in refused.why and "refused by max-forgetting" in refused.why
    assert gate.decide(_evidence(forgetting=0.05), limits).promoted  # at the threshold: promoted
    assert gate.decide(_evidence(forgetting=-0.05), gate.Thresholds(max_forgetting=0.0)).promoted
    assert gate.decide(_evidence(forgetting=0.9), gate.Thresholds(max_forgetting=None)).promoted


def test_gate_refuses_a_round_that_fails_its_own_test_split_even_without_forgetting():
    # the story: round "busy" 0 % on its own test split, average 33.3 % -> 16.7 %, forgetting 0
    useless = _evidence(own=0.0, classes=3, average=(1 / 3 + 0.0) / 2, forgetting=0.0, current_average=1 / 3)
    decision = gate.decide(useless, gate.Thresholds())
    assert not decision.promoted
    assert decision.refused_by == ["min-accuracy", "max-accuracy-drop"]
    assert "refused by min-accuracy: 0.00% on its own test split, no better than chance (33.33%)" in decision.why
    assert "refused by max-accuracy-drop: average accuracy 16.67% vs 33.33% for current round 'plain'" in decision.why
    assert gate.decide(_evidence(own=0.34, classes=3), gate.Thresholds()).promoted  # just above chance
    assert not gate.decide(_evidence(own=1 / 3, classes=3), gate.Thresholds()).promoted  # chance itself
    floor = gate.Thresholds(min_accuracy=0.8)
    assert gate.decide(_evidence(own=0.8), floor).promoted
    below = gate.decide(_evidence(own=0.79), floor)
    assert below.refused_by == ["min-accuracy"] and "below the floor 80.00%" in below.why


def test_gate_average_accuracy_against_the_current_bundle_on_the_same_splits():
    limits = gate.Thresholds(max_accuracy_drop=0.0)
    assert gate.decide(_evidence(average=0.80, forgetting=0.0, current_average=0.80), limits).promoted
    dropped = gate.decide(_evidence(average=0.79, forgetting=0.0, current_average=0.80), limits)
    assert not dropped.promoted and dropped.refused_by == ["max-accuracy-drop"] and "1.00%" in dropped.why
    assert gate.decide(
        _evidence(average=0.79, forgetting=0.0, current_average=0.80), gate.Thresholds(max_accuracy_drop=0.02)
    ).promoted
    assert gate.decide(
        _evidence(average=0.1, forgetting=0.0, current_average=0.9), gate.Thresholds(max_accuracy_drop=None)
    ).promoted
    assert "average accuracy drop vs current ≤ 0.00%" in gate.Thresholds().describe()


def test_selection_modes():
    sources = ["folder:/a", "folder:/b", "folder:/c"]
    assert selection.training_parts(sources, 0, "union") == [{"source": "folder:/a", "fraction": 1.0}]
    assert [p["source"] for p in selection.training_parts(sources, 2, "union")] == sources
    assert selection.training_parts(sources, 2, "naive") == [{"source": "folder:/c", "fraction": 1.0}]
    replay = selection.training_parts(sources, 2, "replay", replay=0.25, seed=7)
    assert replay == [
        {"source": "folder:/a", "fraction": 0.25, "seed": 7 + 2000 + 0},
        {"source": "folder:/b", "fraction": 0.25, "seed": 7 + 2000 + 1},
        {"source": "folder:/c", "fraction": 1.0},
    ]
    assert selection.data_source(selection.training_parts(sources, 2, "naive"), "/x/data.json") == "folder:/c"
    assert selection.data_source(replay, "/x/data.json") == "mix:/x/data.json"
    with pytest.raises(GraftError):
        selection.training_parts(sources, 1, "replay", replay=1.5)
    with pytest.raises(GraftError):
        selection.training_parts(sources, 3, "union")


def test_mix_source_union_and_replay(tmp_path):
    first = digit_folder(tmp_path / "a", ["0", "1", "2"], per_class=10)
    second = digit_folder(tmp_path / "b", ["3", "1"], invert=True, per_class=10)
    mix = tmp_path / "r2" / "data.json"
    mix.parent.mkdir()
    mix.write_text(json.dumps({"parts": [{"source": first}, {"source": second}]}))
    pool, test = load_source(f"mix:{mix}")
    # union of class names, first-seen order; folders list classes sorted, so b contributes 1 then 3
    assert pool.classes == ["0", "1", "2", "3"] and test.classes == pool.classes
    assert len(pool) == 50 and len(test) == 40 and pool.channels == 1
    assert np.bincount(pool.labels).tolist() == [10, 20, 10, 10]
    # labels follow names: an image of b's class "3" is labelled 3, and is inverted (bright background)
    three = np.flatnonzero(pool.labels == 3)[0]
    assert pool.image(int(three)).mean() > 128
    # replay: a seeded stratified sample of the earlier part, the same every time
    mix.write_text(json.dumps({"parts": [{"source": first, "fraction": 0.5, "seed": 3}, {"source": second}]}))
    pool_a, _ = load_source(f"mix:{mix}")
    pool_b, _ = load_source(f"mix:{mix}")
    assert len(pool_a) == 15 + 20
    np.testing.assert_array_equal(pool_a.labels, pool_b.labels)
    assert all((pool_a.image(i) == pool_b.image(i)).all() for i in range(len(pool_a)))
    splits = load_splits(f"mix:{mix}", valid_fraction=0.2, seed=0)
    assert len(splits.train) + len(splits.valid) == 35


def test_mix_file_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(GraftError, match="not a mix file"):
        load_source(f"mix:{bad}")
    bad.write_text(json.dumps({"parts": [{"source": "digits", "fraction": 0}]}))
    with pytest.raises(GraftError, match="fraction"):
        load_source(f"mix:{bad}")
    with pytest.raises(GraftError, match="not found"):
        load_source(f"mix:{tmp_path / 'missing.json'}")


@pytest.mark.parametrize("field", ["own_accuracy", "average", "forgetting", "current_average"])
def test_gate_refuses_when_a_measurement_is_not_a_number(field):
    # An empty split gives NaN, and NaN compares false with every threshold: it must refuse, not promote.
    good = dict(own_accuracy=0.9, classes=3, average=0.9, forgetting=0.0, current_average=0.85)
    decision = gate.decide(gate.Evidence(**{**good, field: math.nan}), gate.Thresholds())
    assert not decision.promoted and "could not be measured" in decision.why
    assert gate.decide(gate.Evidence(**good), gate.Thresholds()).promoted


def test_gate_per_round_forgetting_catches_one_round_the_average_hides():
    # Ten earlier rounds: nine kept perfectly (slightly improved), one forgotten by 40 points. Average 3.1 %.
    per_round = (-0.005,) * 4 + (0.40,) + (-0.005,) * 5
    names = tuple(f"level-{j + 1}" for j in range(10))
    average = sum(per_round) / len(per_round)
    evidence = gate.Evidence(0.9, 3, 0.9, average, forgetting_per_round=per_round, earlier=names)
    assert gate.decide(evidence, gate.Thresholds(max_forgetting=0.05)).promoted  # the average alone lets it through
    decision = gate.decide(evidence, gate.Thresholds(max_forgetting=0.05, max_forgetting_per_round=0.10))
    assert not decision.promoted and decision.refused_by == ["max-forgetting-per-round"]
    assert "forgetting 40.00% of round 5 ('level-5') exceeds 10.00% for any one round" in decision.why
    assert gate.worst_round(per_round) == (4, 0.40)
    # At the threshold: promoted, and the worst round is named in why
    kept = gate.decide(evidence, gate.Thresholds(max_forgetting=0.05, max_forgetting_per_round=0.40))
    assert kept.promoted and "worst round round 5 ('level-5') forgotten 40.00%" in kept.why
    # Both forgetting rules refusing are both named, in RULES' order
    both = gate.decide(evidence, gate.Thresholds(max_forgetting=0.01, max_forgetting_per_round=0.1))
    assert both.refused_by == ["max-forgetting", "max-forgetting-per-round"]
    # Off (the default, and what projects made before the rule get): no refusal, whatever the worst round
    assert gate.Thresholds().max_forgetting_per_round is None
    assert "forgetting of any one round off" in gate.Thresholds().describe()
    assert gate.decide(evidence, gate.Thresholds(max_forgetting=None)).promoted
    # The first round has nothing to forget
    assert gate.decide(gate.Evidence(0.9, 3, 0.9, None), gate.Thresholds(max_forgetting_per_round=0.0)).promoted


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_gate_per_round_forgetting_refuses_a_value_that_is_not_a_number(bad):
    per_round = (0.0, bad, 0.0)
    evidence = gate.Evidence(0.9, 3, 0.9, 0.0, forgetting_per_round=per_round, earlier=("a", "b", "c"))
    for limits in (gate.Thresholds(max_forgetting_per_round=0.5), gate.Thresholds()):
        decision = gate.decide(evidence, limits)
        assert not decision.promoted and decision.refused_by == ["measurement"]
        assert "forgetting of round 2 ('b') could not be measured" in decision.why
    assert gate.worst_round(per_round) == (1, bad) or math.isnan(gate.worst_round(per_round)[1])


def test_per_round_threshold_is_recorded_and_old_projects_default_to_off(tmp_path):
    from graft.rounds import project

    state = project.init(tmp_path / "p", max_forgetting_per_round=0.2, model="resnet10t", size=16)
    assert json.loads((tmp_path / "p" / "rounds.json").read_text())["max_forgetting_per_round"] == 0.2
    assert project.thresholds(state).max_forgetting_per_round == 0.2
    assert project.thresholds(state, max_forgetting_per_round=0.3).max_forgetting_per_round == 0.3
    old = {k: v for k, v in state.items() if k != "max_forgetting_per_round"}
    assert project.thresholds(old).max_forgetting_per_round is None
    with pytest.raises(GraftError, match="--max-forgetting-per-round is a fraction"):
        project.thresholds(state, max_forgetting_per_round=1.5)
    with pytest.raises(GraftError, match="--max-forgetting-per-round is a fraction"):
        project.init(tmp_path / "q", max_forgetting_per_round=math.nan, model="resnet10t", size=16)


def test_status_shows_the_worst_forgotten_round_in_text_and_json(tmp_path):
    from graft.rounds import project, run

    directory = tmp_path / "p"
    state = project.init(directory, max_forgetting_per_round=0.1, model="resnet10t", size=16)
    rows = [[0.9], [0.95, 0.85], [0.70, 0.84, 0.95], [0.89, 0.80, 0.95, 0.9]]
    for k, row in enumerate(rows):
        matrix = metrics.matrix_from_rows(rows[: k + 1])
        state["rounds"].append(
            {"name": f"r{k + 1}", "data": "digits", "mode": "union", "replay": None, "settings": {},
             "dir": f"rounds/{k}-r{k + 1}", "status": "promoted", "accuracy": row,
             "metrics": metrics.summary(matrix, k)}
        )  # fmt: skip
    project.write(directory, state)
    summary = run.status(directory)
    worst = [r["worst_forgotten"] for r in summary["rounds"]]
    assert worst[0] is None  # nothing earlier to forget
    assert worst[2] == {"round": 1, "name": "r1", "forgetting": pytest.approx(0.20)}
    assert worst[3]["round"] == 2 and worst[3]["forgetting"] == pytest.approx(0.05)
    assert json.loads(json.dumps(summary))["rounds"][2]["worst_forgotten"]["name"] == "r1"
    text = "\n".join(run.status_lines(summary))
    assert "worst forgotten: round 1 (r1) 20.0%" in text
    assert "forgetting of any one round ≤ 10.00%" in text
