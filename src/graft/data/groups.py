"""Which images belong together (frames of one video, photos of one session), so a split never cuts a group.

Neighbouring frames of a video are near-copies: split at random, validation holds frames whose twins are in
training, and it measures memory instead of generalisation (valid 100 %, test at chance). A rule names each image's
group from its path relative to its class folder:

- `auto` (default): frames written by `graft data frames` (`<video>-f000123.png`) belong to their video (within their
  class); every other image is a group of its own;
- `folder`: the first sub-folder inside the class folder (`cup/monday/1.jpg` → `monday`); images directly in the
  class folder are groups of their own;
- `regex:PATTERN`: the first match of PATTERN in the relative path (its first capture group when it has one), e.g.
  `regex:^[^_]+` for `session3_0001.jpg`; images it does not match are groups of their own;
- `none`: every image on its own (graft before 0.x: the split ignores where images came from).

Groups named by `folder` or `regex:` are the same group in every class (a session that filmed several objects);
`auto`'s videos belong to one class folder.
"""

from __future__ import annotations

import re
from pathlib import PurePath

GROUP_RULES = ("auto", "folder", "none", "regex:PATTERN")
_FRAME = re.compile(r"^(?P<video>.+)-f\d+$")


def check_group_by(rule: str) -> str:
    """The rule itself when it is one of GROUP_RULES (a regex that compiles); else ValueError with the reason."""
    if rule in ("auto", "folder", "none"):
        return rule
    if rule.startswith("regex:"):
        pattern = rule.removeprefix("regex:")
        if not pattern:
            raise ValueError("regex: needs a pattern, e.g. regex:^[^_]+")
        try:
            re.compile(pattern)
        except re.error as error:
            raise ValueError(f"regex {pattern!r} does not compile: {error}") from None
        return rule
    raise ValueError(f"unknown grouping {rule!r}; use one of {', '.join(GROUP_RULES)}")


def group_of(class_name: str, relative: PurePath, rule: str) -> str | None:
    """The group of the image at `relative` (a path inside its class folder), or None when it stands alone."""
    if rule == "none":
        return None
    if rule == "auto":
        frame = _FRAME.match(relative.stem)
        return f"{class_name}/{relative.parent / frame['video']}" if frame else None
    if rule == "folder":
        return relative.parts[0] if len(relative.parts) > 1 else None
    found = re.search(rule.removeprefix("regex:"), relative.as_posix())
    if found is None:
        return None
    return found.group(1) if found.re.groups else found.group(0)


def describe(rule: str) -> str:
    """How the groups of a rule are called in messages."""
    return {"auto": "videos", "folder": "sub-folders"}.get(rule, "groups")
