"""The promotion gate: a round that forgets too much of earlier rounds does not replace the current bundle."""

from __future__ import annotations


def decide(forgetting: float | None, threshold: float | None) -> tuple[bool, str]:
    """(promoted, why). Forgetting is the round's average forgetting on earlier rounds (Avalanche's definition)."""
    if forgetting is None:
        return True, "first round"
    if threshold is None:
        return True, f"forgetting {forgetting:.2%} (no gate)"
    if forgetting > threshold:
        return False, f"forgetting {forgetting:.2%} on earlier rounds exceeds the gate's {threshold:.2%}"
    return True, f"forgetting {forgetting:.2%} within the gate's {threshold:.2%}"
