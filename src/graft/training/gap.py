"""The end-of-run warning when validation and test disagree: the validation number then says nothing about new
images, and a user reading "valid 100 %" would be fooled (frames of one video on both sides of the split)."""

from __future__ import annotations

import math

WIDE_GAP = 0.15  # the least gap warned about, however large the splits

_WHY = {
    "none": "validation images may be near-copies of training images (frames of one video): try --group-by auto, "
    "folder or regex:PATTERN",
    "auto": "validation images may still be near-copies of training images (photo bursts, one scene): name the "
    "groups with --group-by folder or regex:PATTERN",
}


def wide_gap(valid_acc: float, test_acc: float, valid_units: int, test_units: int) -> float:
    """The gap beyond which valid and test disagree: WIDE_GAP, or twice the standard error of the difference of two
    accuracies when the splits are small. A unit is an independent sample: a group (all frames of one video are one
    unit, as they succeed or fail together), or an image that stands alone."""
    p = (valid_acc + test_acc) / 2
    noise = math.sqrt(max(p * (1 - p), 0.01) * (1 / max(valid_units, 1) + 1 / max(test_units, 1)))
    return max(WIDE_GAP, 2 * noise)


def valid_test_warning(
    valid_acc: float, test_acc: float, group_by: str, valid_units: int, test_units: int
) -> str | None:
    """One line saying what the disagreement likely means, or None when valid and test agree within `wide_gap`."""
    if abs(valid_acc - test_acc) <= wide_gap(valid_acc, test_acc, valid_units, test_units):
        return None
    found = f"WARNING: valid accuracy {valid_acc:.1%} but test accuracy {test_acc:.1%}"
    if valid_acc < test_acc:
        return f"{found}: the test images look easier than the validation ones; check both come from the same data"
    why = _WHY.get(group_by, "the groups (--group-by) may not separate the sources of the images")
    return f"{found}: validation does not predict new images; {why}; or the test images differ from the training ones"
