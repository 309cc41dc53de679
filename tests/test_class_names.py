"""Class names that become folder names (graft.data.class_names): one harmless path component, or a reason."""

from __future__ import annotations

import pytest

from graft.data.class_names import InvalidClassName, check_class_name


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("cup", "cup"),
        ("  red cup ", "red cup"),  # phone keyboards add a trailing space
        ("e\u0301clair", "\u00e9clair"),  # NFD from a macOS keyboard or folder → NFC
        ("猫", "猫"),
        ("👩\u200d🔬", "👩\u200d🔬"),  # an emoji sequence needs its zero-width joiner
        ("T-shirt_top 2", "T-shirt_top 2"),
        ("a.b", "a.b"),
        ("x" * 64, "x" * 64),
    ],
)
def test_names_that_are_one_safe_folder_name_are_kept(raw, expected):
    assert check_class_name(raw) == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "empty"),
        (" \t ", "empty"),
        ("../x", "'/'"),
        ("x/..", "'/'"),
        ("a/b", "'/'"),
        ("a\\b", "'\\\\'"),
        ("..", "starts with '.'"),
        (".hidden", "starts with '.'"),
        ("a..b", "'..'"),
        ("end.", "ends with '.'"),
        ("x\x00y", "U+0000"),
        ("line\nbreak", "U+000A"),
        ("\u202eevil", "U+202E"),  # right-to-left override: shows another name than it is
        ("zero\u200bwidth", "U+200B"),
        ("c:d", "':'"),
        ("what?", "'?'"),
        ("CON", "device"),
        ("nul.txt", "device"),
        ("x" * 65, "too long"),
        ("🍎" * 51, "too long"),  # 51 characters, 204 bytes
        (None, "is text"),
        (["cup"], "is text"),
    ],
)
def test_names_that_could_leave_their_folder_or_hide_are_refused_with_a_reason(raw, reason):
    with pytest.raises(InvalidClassName) as caught:
        check_class_name(raw)
    assert reason in str(caught.value)
    assert "\n" not in str(caught.value)  # one line
