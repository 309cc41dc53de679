"""README's Python API tiers run as written: every ```python block of that section, in order, in one namespace."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## Python API in three tiers"


def _blocks() -> list[str]:
    text = README.read_text()
    start = text.index(SECTION)
    end = text.index("\n## ", start + len(SECTION))
    return re.findall(r"```python\n(.*?)```", text[start:end], re.S)


def test_the_section_has_one_block_per_tier():
    blocks = _blocks()
    assert len(blocks) == 3
    assert "graft.train(" in blocks[0] and "graft.Trainer(" in blocks[1] and ".then(" in blocks[2]


@pytest.mark.slow
def test_the_readme_api_examples_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme"}
    for block in _blocks():
        exec(compile(block, str(README), "exec"), namespace)
    out = capsys.readouterr().out
    trainer, step = namespace["trainer"], namespace["step"]
    assert 1 <= len(trainer.history) <= 3 and "valid acc" in out
    assert [c.verdict for c in step.certificates] == ["exact", "exact"] and step.overall.verdict == "exact"
    saved = namespace["graft"].load(tmp_path / "runs" / "tour-rgb-deeper")
    assert saved.spec.channels == 3 and len(saved.provenance.surgery) == 1
