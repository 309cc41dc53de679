"""`graft rounds add PROJECT NAME --inbox` (graft.rounds.add_from_inbox): the phone's photos become a round."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import graft.rounds as rounds
import graft.rounds.project as rounds_project
from cli_helpers import run_cli as cli
from graft.bundle import load
from graft.data.images import decode_image
from graft.errors import GraftError
from graft.rounds.inbox import counts, pixel_sha256, save_samples, split_of
from rounds_helpers import digit_folder
from serve_helpers import encode

SETTINGS = dict(
    model="resnet10t", input_mode="fold", size=16, epochs=1, batch_size=16, lr=3e-3, workers=0, precision="fp32"
)


def photo(seed: int) -> bytes:
    return encode(Image.fromarray(np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)))


def seeds_on(side: str, count: int, start: int = 0) -> list[int]:
    """Seeds of `photo` whose content puts them on `side` (test: a fifth of them)."""
    found = []
    seed = start
    while len(found) < count:
        if split_of(pixel_sha256(decode_image(photo(seed)))) == side:
            found.append(seed)
        seed += 1
    return found


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*.png")}


@pytest.fixture
def project(tmp_path) -> Path:
    directory = tmp_path / "proj"
    rounds.init(directory, **SETTINGS)
    return directory


def test_the_inbox_becomes_a_round_and_only_what_it_took_leaves_the_inbox(project):
    save_samples(project, "cup", [photo(s) for s in range(10)])
    save_samples(project, "plate", [photo(s) for s in range(10, 16)])
    before = counts(project)
    inbox = project / "inbox"
    names = files_under(inbox)

    result = rounds.add_from_inbox(project, "kitchen-1", settings={"epochs": 2})

    data = project / "samples" / "kitchen-1"
    assert result["data"] == f"folder:{data.resolve()}" and result["index"] == 1
    assert result["taken"] == before and result["moved_to_train"] == []
    assert files_under(data) == names  # the same split/class/hash paths, moved
    assert files_under(inbox) == set()
    entry = rounds_project.read(project)["rounds"][0]
    assert (entry["name"], entry["data"], entry["status"], entry["settings"]) == (
        "kitchen-1",
        result["data"],
        "pending",
        {"epochs": 2},
    )
    # the round's folder is a data source as it is
    from graft.data.sources import load_source

    pool, test = load_source(result["data"])
    assert sorted(pool.classes) == ["cup", "plate"] and len(pool) + len(test) == 16

    # photos sent afterwards wait for the next round; those taken are duplicates now
    report = save_samples(project, "cup", [photo(0), photo(99)])
    assert [d["where"] for d in report.duplicates] == ["round kitchen-1"] and len(report.saved) == 1


def test_a_class_whose_photos_all_fell_on_the_test_side_is_trained_on(project):
    test_only = seeds_on("test", 2, start=100)
    save_samples(project, "cup", [photo(s) for s in range(8)])
    save_samples(project, "plate", [photo(s) for s in test_only])
    assert counts(project)["plate"] == {"train": 0, "test": 2}
    result = rounds.add_from_inbox(project, "r1")
    assert result["moved_to_train"] == ["plate"] and result["taken"]["plate"] == {"train": 2, "test": 0}
    assert "plate" in result["untested"]
    from graft.data.folder import scan_folder

    scan = scan_folder(result["data"].removeprefix("folder:"))  # a valid layout B
    assert scan.train.classes == ["cup", "plate"]


@pytest.mark.parametrize(
    ("fill", "message"),
    [
        ({}, "is empty"),
        ({"cup": range(4)}, "a round needs at least 2"),
    ],
)
def test_an_inbox_that_cannot_make_a_round_is_refused_and_nothing_moves(project, fill, message):
    for label, seeds in fill.items():
        save_samples(project, label, [photo(s) for s in seeds])
    names = files_under(project / "inbox")
    with pytest.raises(GraftError, match=message):
        rounds.add_from_inbox(project, "r1")
    assert files_under(project / "inbox") == names
    assert rounds_project.read(project)["rounds"] == [] and not (project / "samples").exists()


def test_a_used_name_a_bad_name_and_a_busy_project_are_refused_before_anything_moves(project):
    save_samples(project, "cup", [photo(s) for s in range(3)])
    save_samples(project, "plate", [photo(s) for s in range(3, 6)])
    rounds.add_from_inbox(project, "r1")
    save_samples(project, "cup", [photo(s) for s in range(6, 9)])
    save_samples(project, "bowl", [photo(s) for s in range(9, 12)])
    names = files_under(project / "inbox")
    with pytest.raises(GraftError, match="already has a round named 'r1'"):
        rounds.add_from_inbox(project, "r1")
    with pytest.raises(GraftError, match="round name"):
        rounds.add_from_inbox(project, "../r2")
    with rounds_project.locked(project), pytest.raises(GraftError, match="is busy"):
        rounds.add_from_inbox(project, "r2")
    assert files_under(project / "inbox") == names and len(rounds_project.read(project)["rounds"]) == 1


def test_photos_moved_before_a_crash_return_to_the_inbox_and_make_the_next_round(project):
    save_samples(project, "cup", [photo(s) for s in range(4)])
    save_samples(project, "plate", [photo(s) for s in range(4, 8)])
    names = files_under(project / "inbox")
    orphan = project / "samples" / "cut-short"
    for path in (project / "inbox").rglob("*.png"):  # moved, then the process died before the manifest
        target = orphan / path.relative_to(project / "inbox")
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(path, target)
    save_samples(project, "cup", [photo(8)])  # sent while the server did not know
    result = rounds.add_from_inbox(project, "r1")
    taken = project / "samples" / "r1"
    assert names < files_under(taken) and len(files_under(taken)) == 9
    assert not orphan.exists() and files_under(project / "inbox") == set()
    assert sum(c["train"] + c["test"] for c in result["taken"].values()) == 9


def test_cli_rounds_add_inbox(project, capsys):
    save_samples(project, "cup", [photo(s) for s in range(5)])
    save_samples(project, "plate", [photo(s) for s in range(5, 10)])
    code, _, err = cli(["rounds", "add", str(project), "r1"], capsys)
    assert code == 2 and "--data SOURCE, or --inbox" in err
    code, _, err = cli(["rounds", "add", str(project), "r1", "--inbox", "--data", "digits"], capsys)
    assert code == 2 and "--data SOURCE, or --inbox" in err
    code, out, err = cli(["rounds", "add", str(project), "r1", "--inbox", "--epochs", "3"], capsys)
    assert code == 0, err
    assert "round 1: r1 from the inbox: 10 photos" in out and "cup 5, plate 5" in out
    code, _, err = cli(["rounds", "add", str(project), "r2", "--inbox"], capsys)
    assert code == 2 and "is empty" in err
    code, out, _ = cli(["rounds", "add", "--help"], capsys)
    assert "--inbox" in out


def test_a_round_from_the_inbox_trains_and_grows_the_classes(tmp_path, capsys):
    """End to end: round 1 from a folder (digits 0, 1); the phone teaches 1 again and a new class 7; the inbox
    round trains from round 1's bundle and its classifier grows by name."""
    from graft.data import load_splits

    project = tmp_path / "proj"
    rounds.init(project, max_forgetting=None, min_accuracy=0.0, max_accuracy_drop=None, **SETTINGS)
    rounds.add(project, "plain", digit_folder(tmp_path / "plain", ["0", "1"], per_class=16))
    pool = load_splits("digits", valid_fraction=0.1).test
    for label in ("1", "7"):
        rows = np.flatnonzero(pool.labels == pool.classes.index(label))[:12]
        blobs = [encode(Image.fromarray(np.kron(pool.image(int(i))[:, :, 0], np.ones((2, 2), np.uint8)))) for i in rows]
        assert len(save_samples(project, label, blobs).saved) == 12
    rounds.add_from_inbox(project, "phone-1")
    summary = rounds.train(project, workers=0)
    assert [r["status"] for r in summary["rounds"]] == ["promoted", "promoted"]
    second = load(project / "rounds/2-phone-1/bundle")
    assert second.classes == ["0", "1", "7"]
    assert second.provenance.continued_from.bundle.endswith("rounds/1-plain/bundle")
    parts = json.loads((project / "rounds/2-phone-1/data.json").read_text())["parts"]
    assert parts[-1]["source"] == f"folder:{(project / 'samples/phone-1').resolve()}"
    assert summary["current"]["round"] == "phone-1"
