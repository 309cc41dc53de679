"""docs/surgery.md's story (3 classes, 64×64×1 → 128×128×3 plus a block) stays runnable: every command of its
```bash block parses with the current CLI, and the data-writing step makes the folders the commands name."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from graft.cli import app

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "surgery.md"
SECTION = "## The person's story"


def _commands() -> list[list[str]]:
    text = DOC.read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    blocks = re.findall(r"```bash\n(.*?)```", text[start : end if end > 0 else None], re.S)
    assert blocks, "the story has no ```bash block"
    joined = blocks[0].replace("\\\n", " ")
    lines = [line.split("#")[0].strip() for line in joined.splitlines()]
    return [shlex.split(line) for line in lines if line]


def test_the_story_is_the_one_the_issue_asks_for():
    commands = _commands()
    surgeries = [c for c in commands if c[:2] == ["graft", "surgery"]]
    assert surgeries and all("--channels" in c and "--size" in c and "--insert-after" in c for c in surgeries)
    trains = [c for c in commands if c[:2] == ["graft", "train"]]
    assert any("--weights" in c and c[c.index("--epochs") + 1] == "1" for c in trains)  # fine-tuning, one epoch


@pytest.mark.parametrize("command", [c for c in _commands() if c[0] == "graft"], ids=lambda c: " ".join(c[:2]))
def test_every_graft_command_of_the_story_parses(command):
    group = typer.main.get_command(app)
    assert hasattr(group, "resolve_command")  # a command group (typer may bring its own click)
    context = group.make_context("graft", command[1:], resilient_parsing=False)
    name, sub, rest = group.resolve_command(context, command[1:])
    assert sub is not None, f"no command {name!r}"
    sub.make_context(name, rest)  # raises on an unknown option or a value of the wrong type


def test_the_story_data_step_writes_the_folders_it_names(tmp_path):
    writer = next(c for c in _commands() if "--write-data" in c)
    script = next(part for part in writer if part.endswith(".py"))
    arguments = writer[writer.index(script) + 1 :]
    subprocess.run([sys.executable, str(ROOT / script), *arguments], cwd=tmp_path, check=True, capture_output=True)
    named = {part.split(":", 1)[1] for c in _commands() for part in c if part.startswith("folder:")}
    assert named
    for folder in named:
        classes = {p.name for p in (tmp_path / folder).iterdir() if p.is_dir() and p.name not in ("train", "test")}
        classes |= {p.name for p in (tmp_path / folder / "train").glob("*") if p.is_dir()}
        assert classes == {"0", "1", "2"}, folder
