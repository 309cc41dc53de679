"""timm's model names: which match a pattern, which have pretrained weights, and close matches for a wrong name.

`graft models PATTERN` lists them; `check_model_name` suggests from them. A bare word matches names that contain it
(`mobilenet`), a pattern with `*`/`?` is a shell-style wildcard (`resnet*d`).
"""

from __future__ import annotations

import difflib
from functools import cache

import timm

_SUGGESTIONS = 6
_PER_FAMILY = 2


@cache
def pretrained_tags() -> dict[str, tuple[str, ...]]:
    """Architecture name → the tags of its pretrained weights (`resnet18` → `a1_in1k`, `tv_in1k`, …)."""
    tags: dict[str, list[str]] = {}
    for full in timm.list_pretrained():
        name, _, tag = full.partition(".")
        tags.setdefault(name, []).append(tag)
    return {name: tuple(found) for name, found in tags.items()}


def default_tag(name: str) -> str | None:
    """The weights `--pretrained imagenet` loads for `name` (timm's default tag), or None."""
    cfg = timm.get_pretrained_cfg(name)
    return cfg.tag if cfg is not None and cfg.has_weights else None


def matching(pattern: str | None = None, *, pretrained_only: bool = False) -> list[str]:
    """timm names matching `pattern` (a word: names containing it; with * or ?: a wildcard), sorted."""
    if pattern and not any(ch in pattern for ch in "*?["):
        pattern = f"*{pattern}*"
    names = timm.list_models(pattern or "")
    tags = pretrained_tags()
    return [name for name in names if name in tags] if pretrained_only else names


def _rank(name: str, word: str) -> tuple:
    """Prefix matches, then names with weights, then the base width (`_100`), then the simplest names."""
    tokens = name.split("_")
    return (not name.startswith(word), name not in pretrained_tags(), "100" not in tokens, len(tokens), len(name), name)


def suggest(name: str, limit: int = _SUGGESTIONS) -> list[str]:
    """Close timm names for a wrong `name`: names containing it (best first, at most two of a family, so
    `mobilenet` suggests mobilenetv2_100 and mobilenetv3_small_100), else spelling neighbours."""
    word = name.lower()
    containing = sorted((n for n in timm.list_models() if word in n), key=lambda n: _rank(n, word))
    chosen: list[str] = []
    families: dict[str, int] = {}
    for candidate in containing:
        family = candidate.split("_")[0]
        if families.get(family, 0) < _PER_FAMILY:
            chosen.append(candidate)
            families[family] = families.get(family, 0) + 1
        if len(chosen) == limit:
            break
    if chosen:
        return chosen
    close = difflib.get_close_matches(word, timm.list_models(), n=limit * 2, cutoff=0.6)
    return sorted(close, key=lambda n: (n not in pretrained_tags(), close.index(n)))[:limit]
