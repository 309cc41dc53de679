"""The promotion gate: a round replaces the current bundle only if it is good on its own data, no worse overall
than the bundle it would replace, and does not forget too much of earlier rounds.

Three rules, each with a threshold stored in the project (`rounds init`, overridden per `rounds train` call):

- `min-accuracy`: the round's accuracy on its own test split must reach this floor (default: better than chance,
  1 / its number of classes). A forgetting-only gate promoted a round scoring 0 % on its own data.
- `max-accuracy-drop`: its average accuracy over every round's test split so far must not fall more than this
  below the current bundle's on the same splits (default 0: no drop). The same splits on both sides, so a harder
  new round does not count against it.
- `max-forgetting`: its average forgetting of earlier rounds (Avalanche's definition) must not exceed this.
- `max-forgetting-per-round`: its forgetting of any ONE earlier round must not exceed this (default: off). With
  many earlier rounds an average hides one round forgotten badly among well-kept ones; this rule does not.

A pure decision: the numbers come in, (promoted, why, the rules that refused) come out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

RULES = ("min-accuracy", "max-accuracy-drop", "max-forgetting", "max-forgetting-per-round")


@dataclass(frozen=True)
class Thresholds:
    max_forgetting: float | None = 0.05  # None: no forgetting rule
    min_accuracy: float | None = None  # None: better than chance
    max_accuracy_drop: float | None = 0.0  # None: no average-accuracy rule
    max_forgetting_per_round: float | None = None  # None: off (projects made before the rule existed too)

    def describe(self) -> str:
        floor = "> chance (1/classes)" if self.min_accuracy is None else f"≥ {self.min_accuracy:.2%}"
        drop = "any" if self.max_accuracy_drop is None else f"≤ {self.max_accuracy_drop:.2%}"
        forgetting = "any" if self.max_forgetting is None else f"≤ {self.max_forgetting:.2%}"
        per_round = "off" if self.max_forgetting_per_round is None else f"≤ {self.max_forgetting_per_round:.2%}"
        return (
            f"own test accuracy {floor}; average accuracy drop vs current {drop}; forgetting {forgetting}; "
            f"forgetting of any one round {per_round}"
        )


@dataclass(frozen=True)
class Evidence:
    """What the gate weighs for round k."""

    own_accuracy: float  # R[k, k]: on the round's own test split
    classes: int  # classes in that split (chance is 1 / classes)
    average: float  # the round's model, mean accuracy over rounds 1..k
    forgetting: float | None  # None for the first round
    current_average: float | None = None  # the current bundle's mean over the same splits (None: no current)
    current: str | None = None  # the current round's name, for the message
    forgetting_per_round: tuple[float, ...] = ()  # F_kj for each earlier round j (empty for the first round)
    earlier: tuple[str, ...] = ()  # the earlier rounds' names, for the message (optional)


@dataclass(frozen=True)
class Decision:
    promoted: bool
    why: str
    refused_by: list[str] = field(default_factory=list)  # the RULES that refused it, in RULES' order


def decide(evidence: Evidence, thresholds: Thresholds) -> Decision:
    """Apply every rule; a round is promoted only when none refuses it, and `why` names each rule that did."""
    refusals: list[tuple[str, str]] = []
    passed: list[str] = []
    unknown = _not_finite(evidence)
    if unknown:  # an empty or failed measurement promotes nothing: NaN compares false with every threshold
        return Decision(False, f"refused: {', '.join(unknown)} could not be measured (not a number)", ["measurement"])

    chance = 1.0 / max(evidence.classes, 1)
    if thresholds.min_accuracy is None:
        if evidence.own_accuracy <= chance:
            refusals.append(
                (
                    "min-accuracy",
                    f"{evidence.own_accuracy:.2%} on its own test split, no better than chance ({chance:.2%})",
                )
            )
        else:
            passed.append(f"own test {evidence.own_accuracy:.2%}")
    elif evidence.own_accuracy < thresholds.min_accuracy:
        refusals.append(
            (
                "min-accuracy",
                f"{evidence.own_accuracy:.2%} on its own test split, below the floor {thresholds.min_accuracy:.2%}",
            )
        )
    else:
        passed.append(f"own test {evidence.own_accuracy:.2%}")

    if evidence.current_average is not None and thresholds.max_accuracy_drop is not None:
        drop = evidence.current_average - evidence.average
        against = f"current round {evidence.current!r}" if evidence.current else "the current bundle"
        if drop > thresholds.max_accuracy_drop + 1e-12:
            refusals.append(
                (
                    "max-accuracy-drop",
                    f"average accuracy {evidence.average:.2%} vs {evidence.current_average:.2%} for {against} "
                    f"on the same splits, a drop of {drop:.2%} (allowed {thresholds.max_accuracy_drop:.2%})",
                )
            )
        else:
            passed.append(f"average {evidence.average:.2%} vs {evidence.current_average:.2%}")

    if evidence.forgetting is not None:
        if thresholds.max_forgetting is None:
            passed.append(f"forgetting {evidence.forgetting:.2%} (no forgetting rule)")
        elif evidence.forgetting > thresholds.max_forgetting:
            refusals.append(
                (
                    "max-forgetting",
                    f"forgetting {evidence.forgetting:.2%} on earlier rounds exceeds {thresholds.max_forgetting:.2%}",
                )
            )
        else:
            passed.append(f"forgetting {evidence.forgetting:.2%} within {thresholds.max_forgetting:.2%}")

    worst = worst_round(evidence.forgetting_per_round)
    if worst is not None and thresholds.max_forgetting_per_round is not None:
        j, value = worst
        name = _round_name(evidence.earlier, j)
        if value > thresholds.max_forgetting_per_round:
            refusals.append(
                (
                    "max-forgetting-per-round",
                    f"forgetting {value:.2%} of {name} exceeds {thresholds.max_forgetting_per_round:.2%} "
                    "for any one round",
                )
            )
        else:
            passed.append(f"worst round {name} forgotten {value:.2%}")

    if refusals:
        return Decision(
            False, "; ".join(f"refused by {rule}: {text}" for rule, text in refusals), [rule for rule, _ in refusals]
        )
    first = "first round: " if evidence.forgetting is None else ""
    return Decision(True, first + ", ".join(passed))


def worst_round(per_round: tuple[float, ...] | list[float]) -> tuple[int, float] | None:
    """(index, forgetting) of the earlier round forgotten most; None without earlier rounds. NaN wins (it must
    be seen, not hidden by a comparison that is always false)."""
    if not per_round:
        return None
    nan = [j for j, value in enumerate(per_round) if not math.isfinite(value)]
    j = nan[0] if nan else max(range(len(per_round)), key=lambda i: per_round[i])
    return j, float(per_round[j])


def _round_name(names: tuple[str, ...], j: int) -> str:
    return f"round {j + 1} ({names[j]!r})" if j < len(names) else f"round {j + 1}"


def _not_finite(evidence: Evidence) -> list[str]:
    """The measurements the gate needs that are NaN or infinite."""
    unknown = [
        f"forgetting of {_round_name(evidence.earlier, j)}"
        for j, value in enumerate(evidence.forgetting_per_round)
        if not math.isfinite(value)
    ]
    values = {
        "own test accuracy": evidence.own_accuracy,
        "average accuracy": evidence.average,
        "forgetting": evidence.forgetting,
        "current bundle's average accuracy": evidence.current_average,
    }
    return [name for name, value in values.items() if value is not None and not math.isfinite(value)] + unknown
