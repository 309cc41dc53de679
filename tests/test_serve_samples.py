"""POST/GET /v1/samples: labelled photos from the phone into the served rounds project's inbox, and every hostile
way of sending them refused with a 4xx JSON reason and nothing written outside the inbox."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

import graft.rounds as rounds
from graft.data.images import decode_image
from graft.io import atomic_write_json
from graft.rounds.inbox import TEST_EVERY, pixel_sha256, split_of
from graft.serve.app import create_app
from serve_helpers import encode, png_header_only

TOKEN = "s3cret"
AUTH = {"authorization": f"Bearer {TOKEN}"}
PHONE = ("192.168.1.20", 50000)
LOCAL = ("127.0.0.1", 50000)


MODEL_CLASSES = ["cat", "dog", "Mug"]


@pytest.fixture(scope="module")
def untrained(tmp_path_factory) -> Path:
    """An untrained tiny bundle: these tests store photos, they never ask the model (no training needed)."""
    from graft.bundle import Bundle
    from graft.models.factory import create_model

    torch.manual_seed(0)
    model, arch, spec, _ = create_model("resnet10t", len(MODEL_CLASSES), input_mode="fold", size=16)
    return Bundle(model.eval(), arch, spec, MODEL_CLASSES).save(tmp_path_factory.mktemp("untrained") / "bundle")


def make_project(tmp_path: Path, bundle: Path) -> Path:
    """A rounds project whose round 1 (a copy of `bundle`) is promoted."""
    project = tmp_path / "proj"
    rounds.init(project, model="resnet10t", input_mode="fold", size=16)
    shutil.copytree(bundle, project / "rounds/1-plain/bundle")
    pointer = {"round": "plain", "index": 1, "bundle": "rounds/1-plain/bundle", "why": "test"}
    atomic_write_json(project / "current.json", pointer)
    return project


def request(app, method: str, path: str, *, client=PHONE, **kwargs) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=client)
        async with httpx.AsyncClient(transport=transport, base_url="http://192.168.1.10:8000") as http:
            return await http.request(method, path, **kwargs)

    return asyncio.run(go())


def photo(seed: int, size: tuple[int, int] = (12, 16)) -> bytes:
    """A small distinct RGB PNG per seed."""
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    return encode(Image.fromarray(pixels))


def send(app, label: str | None, files: list[bytes], headers=AUTH, data_extra=None, **kwargs) -> httpx.Response:
    data = ({} if label is None else {"label": label}) | (data_extra or {})
    parts = [("file", (f"p{i}.png", blob, "image/png")) for i, blob in enumerate(files)]
    return request(app, "POST", "/v1/samples", data=data, files=parts, headers=headers, **kwargs)


# The inbox's own housekeeping: its folder, its lock file and the (emptied) staging folder.
HOUSEKEEPING = {"proj/inbox", "proj/inbox/.lock", "proj/inbox/.staging"}


def tree(root: Path) -> dict[str, str]:
    """Every folder and file under `root`, files with their content hash (what 'nothing written' is checked
    against), less the inbox's housekeeping."""
    found = {}
    for folder, dirs, names in os.walk(root):
        for name in dirs:
            found[str((Path(folder) / name).relative_to(root))] = "folder"
        for name in names:
            path = Path(folder) / name
            found[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return {key: value for key, value in found.items() if key not in HOUSEKEEPING}


@pytest.fixture
def served(untrained, tmp_path):
    project = make_project(tmp_path, untrained)
    return project, create_app(project, engine="torch", token=TOKEN, watch_s=0)


def test_photos_are_saved_by_content_with_a_held_out_share_and_counted(served):
    project, app = served
    blobs = [photo(seed) for seed in range(12)]
    response = send(app, "cup", blobs)
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["saved"]) == 12 and body["duplicates"] == [] and body["relabelled"] == []
    for item, blob in zip(body["saved"], blobs, strict=True):
        pixels = decode_image(blob)
        assert item["sha256"] == pixel_sha256(pixels)
        assert item["split"] == split_of(item["sha256"])
        stored = project / "inbox" / item["split"] / "cup" / f"{item['sha256']}.png"
        assert np.array_equal(decode_image(stored), pixels)  # the same pixels training will see
    tests = sum(1 for item in body["saved"] if item["split"] == "test")
    assert body["counts"] == {"cup": {"train": 12 - tests, "test": tests}}
    assert body["total"] == 12
    again = send(app, "cup", blobs[:3]).json()
    assert again["saved"] == [] and [d["where"] for d in again["duplicates"]] == ["inbox"] * 3
    listed = request(app, "GET", "/v1/samples", headers=AUTH).json()
    assert listed["counts"] == body["counts"] and listed["test_share"] == 1 / TEST_EVERY


def _jpeg_with_exif_and_gps() -> tuple[bytes, np.ndarray]:
    """A JPEG stored sideways (EXIF orientation 6) with a GPS block, and the upright pixels it shows."""
    pixels = np.random.default_rng(7).integers(0, 256, (10, 14, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x8825] = {1: "N", 2: (52.0, 31.0, 12.0)}  # GPSInfo: where the photo was taken
    blob = encode(Image.fromarray(pixels), "JPEG", quality=95, exif=exif)
    return blob, decode_image(blob)


def test_orientation_is_applied_and_no_metadata_survives(served):
    project, app = served
    blob, upright = _jpeg_with_exif_and_gps()
    assert upright.shape[:2] == (14, 10)  # the decoder turned it: the test can tell
    item = send(app, "cup", [blob]).json()["saved"][0]
    stored = project / "inbox" / item["split"] / "cup" / f"{item['sha256']}.png"
    with Image.open(stored) as image:
        assert image.format == "PNG" and image.size == (10, 14)
        assert not image.getexif() and "exif" not in image.info and not image.text
    assert np.array_equal(decode_image(stored), upright)
    assert b"GPS" not in stored.read_bytes() and b"Exif" not in stored.read_bytes()


def test_a_photo_sent_again_with_another_label_moves_to_it(served):
    project, app = served
    blob = photo(1)
    first = send(app, "cup", [blob]).json()["saved"][0]
    moved = send(app, "plate", [blob]).json()
    assert moved["saved"] == [] and moved["relabelled"] == [{**first, "from": "cup"}]
    side = first["split"]
    assert moved["counts"] == {"plate": {"train": int(side == "train"), "test": int(side == "test")}}
    assert not (project / "inbox" / first["split"] / "cup").exists()


HOSTILE_LABELS = ["../x", "a/b", "..", ".", ".hidden", "a\\b", "", "   ", "x\x00y", "tab\there", "nul", "c:d", "a..b",
                  "x" * 65, "\u202eevil", "zero\u200bwidth", "end."]  # fmt: skip


@pytest.mark.parametrize("label", HOSTILE_LABELS)
def test_a_class_name_that_is_not_one_safe_folder_name_is_refused_and_writes_nothing(served, tmp_path, label):
    _, app = served
    before = tree(tmp_path)
    response = send(app, label, [photo(0)])
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "invalid_label"
    assert tree(tmp_path) == before


@pytest.mark.parametrize("label", ["Käse", "猫", "red cup", "🍎", "e\u0301clair"])
def test_unicode_class_names_are_one_folder_each_in_nfc(served, label):
    import unicodedata

    project, app = served
    response = send(app, label, [photo(3)])
    assert response.status_code == 200, response.text
    name = unicodedata.normalize("NFC", label)
    assert response.json()["label"] == name
    assert [p.name for p in (project / "inbox").glob("*/*")] == [name]


def _hostile_requests() -> dict[str, tuple[dict, int, str]]:
    parts = lambda *blobs: [("file", (f"{i}.png", b, "image/png")) for i, b in enumerate(blobs)]  # noqa: E731
    return {
        "no token": ({"data": {"label": "cup"}, "files": parts(photo(0)), "headers": {}}, 401, "unauthorized"),
        "wrong token": (
            {"data": {"label": "cup"}, "files": parts(photo(0)), "headers": {"authorization": "Bearer no"}},
            401,
            "unauthorized",
        ),
        "bomb": ({"data": {"label": "cup"}, "files": parts(png_header_only(100_000, 100_000))}, 413, "image_too_large"),
        "thin bomb": ({"data": {"label": "cup"}, "files": parts(png_header_only(1, 40_000))}, 413, "image_too_large"),
        "empty file": ({"data": {"label": "cup"}, "files": parts(b"")}, 400, "empty_upload"),
        "not an image": ({"data": {"label": "cup"}, "files": parts(b"#!/bin/sh\nrm -rf /\n")}, 422, "not_an_image"),
        "one bad of many": ({"data": {"label": "cup"}, "files": parts(photo(0), b"GIF89a junk")}, 422, "not_an_image"),
        "no label": ({"files": parts(photo(0))}, 422, "missing_label"),
        "two labels": ({"data": {"label": ["a", "b"]}, "files": parts(photo(0))}, 422, "missing_label"),
        "no file": ({"data": {"label": "cup"}}, 415, "not_multipart"),
        "raw body": ({"content": photo(0), "headers": {**AUTH, "content-type": "image/png"}}, 415, "not_multipart"),
        "too many files": ({"data": {"label": "cup"}, "files": parts(*[photo(0)] * 5)}, 413, "too_many_files"),
        "huge body": ({"data": {"label": "cup"}, "files": parts(b"\xff" * 300_000)}, 413, "upload_too_large"),
        "case clash with the model": ({"data": {"label": "mug"}, "files": parts(photo(0))}, 409, "class_conflict"),
        "label over 4 KB": ({"data": {"label": "x" * 5000}, "files": parts(photo(0))}, 400, "bad_request"),
        "label as a file": ({"files": [("label", ("l.txt", b"cup")), *parts(photo(0))]}, 422, "missing_label"),
        "truncated multipart": (  # the parser finds no complete part: no label
            {"content": b"--x\r\nnonsense", "headers": {**AUTH, "content-type": "multipart/form-data; boundary=x"}},
            422,
            "missing_label",
        ),
        "multipart without a boundary": (
            {"content": b"abc", "headers": {**AUTH, "content-type": "multipart/form-data"}},
            400,
            "bad_request",
        ),
        "svg": (
            {"data": {"label": "cup"}, "files": parts(b"<svg xmlns='http://www.w3.org/2000/svg'/>")},
            422,
            "not_an_image",
        ),
    }


@pytest.mark.parametrize("case", list(_hostile_requests()))
def test_hostile_samples_requests_get_a_4xx_reason_and_write_nothing(untrained, tmp_path, case):
    project = make_project(tmp_path, untrained)
    app = create_app(
        project, engine="torch", token=TOKEN, watch_s=0, samples_max_files=4, max_upload_mb=0.25, max_side=20_000
    )
    kwargs, status, code = _hostile_requests()[case]
    kwargs = {"headers": AUTH, **kwargs}
    before = tree(tmp_path)
    response = request(app, "POST", "/v1/samples", **kwargs)
    assert response.status_code == status, response.text
    assert response.json()["code"] == code
    assert tree(tmp_path) == before


def test_without_a_token_only_this_computer_may_store(untrained, tmp_path):
    project = make_project(tmp_path, untrained)
    app = create_app(project, engine="torch", watch_s=0)
    before = tree(tmp_path)
    far = send(app, "cup", [photo(0)], headers={})
    assert (far.status_code, far.json()["code"]) == (403, "forbidden")
    assert tree(tmp_path) == before
    near = send(app, "cup", [photo(0)], headers={}, client=LOCAL)
    assert near.status_code == 200, near.text


def test_a_plain_bundle_has_no_inbox(untrained, tmp_path):
    app = create_app(untrained, engine="torch", token=TOKEN)
    for method in ("GET", "POST"):
        response = request(app, method, "/v1/samples", headers=AUTH, files=[("file", ("a.png", photo(0)))])
        assert (response.status_code, response.json()["code"]) == (409, "not_a_rounds_project")


def test_the_inbox_is_bounded_per_class_and_in_all(untrained, tmp_path):
    """Thousands of tiny uploads stop at the bounds: each request past them is refused whole."""
    project = make_project(tmp_path, untrained)
    app = create_app(project, engine="torch", token=TOKEN, watch_s=0, inbox_max_per_class=5, inbox_max_total=8)
    assert send(app, "cup", [photo(s) for s in range(4)]).status_code == 200
    before = tree(tmp_path)
    over = send(app, "cup", [photo(s) for s in range(10, 12)])  # 4 + 2 > 5 per class
    assert (over.status_code, over.json()["code"]) == (409, "inbox_full")
    assert tree(tmp_path) == before
    assert send(app, "cup", [photo(20)]).status_code == 200  # exactly 5
    assert send(app, "plate", [photo(s) for s in range(30, 33)]).status_code == 200  # 8 in all
    for seed in range(40, 140):  # a flood of tiny distinct photos: every one refused, nothing grows
        response = send(app, f"c{seed}", [photo(seed, (2, 2))])
        assert (response.status_code, response.json()["code"]) == (409, "inbox_full")
    assert request(app, "GET", "/v1/samples", headers=AUTH).json()["total"] == 8
    assert tree(tmp_path / "proj" / "inbox") == tree(project / "inbox")


def test_a_request_past_the_timeout_saves_nothing(untrained, tmp_path, monkeypatch):
    import time

    import graft.rounds.inbox as inbox

    project = make_project(tmp_path, untrained)
    app = create_app(project, engine="torch", token=TOKEN, watch_s=0, timeout_s=0.2)
    real_stage = inbox._stage
    monkeypatch.setattr(inbox, "_stage", lambda *a: (time.sleep(0.15), real_stage(*a))[1])
    before = tree(tmp_path)
    response = send(app, "cup", [photo(s) for s in range(4)])
    assert (response.status_code, response.json()["code"]) == (504, "timeout")
    app.state.sampler.submit(lambda: None).result()  # the abandoned job has stopped
    assert tree(tmp_path) == before


def test_a_request_already_saving_at_the_timeout_answers_what_it_saved(untrained, tmp_path, monkeypatch):
    import time

    import graft.rounds.inbox as inbox

    project = make_project(tmp_path, untrained)
    app = create_app(project, engine="torch", token=TOKEN, watch_s=0, timeout_s=0.2)
    real_commit = inbox._commit
    monkeypatch.setattr(inbox, "_commit", lambda *a: (time.sleep(0.4), real_commit(*a))[1])
    response = send(app, "cup", [photo(1)])
    assert response.status_code == 200, response.text  # a 504 would say "nothing saved", which is false here
    assert len(response.json()["saved"]) == 1
    assert sum(inbox.counts(project)["cup"].values()) == 1


def test_concurrent_requests_with_the_same_photo_save_it_once(untrained, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from graft.rounds.inbox import counts, save_samples

    project = make_project(tmp_path, untrained)
    with ThreadPoolExecutor(8) as pool:
        reports = list(pool.map(lambda _: save_samples(project, "cup", [photo(5), photo(6)]), range(16)))
    assert sum(len(r.saved) for r in reports) == 2
    assert sum(len(r.duplicates) for r in reports) == 30
    assert sum(counts(project)["cup"].values()) == 2


def test_the_inbox_is_bounded_in_bytes(untrained, tmp_path):
    project = make_project(tmp_path, untrained)
    app = create_app(project, engine="torch", token=TOKEN, watch_s=0, inbox_max_mb=1)
    noise = encode(Image.fromarray(np.random.default_rng(0).integers(0, 256, (700, 700, 3), dtype=np.uint8)))
    assert len(noise) > 2**20  # random pixels do not compress: its PNG alone passes 1 MB
    before = tree(tmp_path)
    response = send(app, "cup", [noise])
    assert (response.status_code, response.json()["code"]) == (409, "inbox_full") and "MB" in response.json()["detail"]
    assert tree(tmp_path) == before


def test_a_class_the_model_knows_in_another_unicode_form_is_that_class(tmp_path):
    """A folder made on macOS gives NFD class names; the phone sends NFC. They are one class, not two."""
    from graft.rounds.inbox import save_samples

    decomposed = "e\u0301clair"
    report = save_samples(tmp_path, "\u00e9clair", [photo(0)], known_classes=[decomposed])
    assert report.label == decomposed and list(report.counts) == [decomposed]


@pytest.mark.parametrize(
    ("setting", "value", "flag"),
    [
        ("samples_max_files", 0, "--samples-max-files"),
        ("inbox_max_per_class", 0, "--inbox-max-per-class"),
        ("inbox_max_total", -1, "--inbox-max-total"),
        ("inbox_max_mb", float("inf"), "--inbox-max-mb"),
        ("inbox_max_mb", 0.5, "--inbox-max-mb"),
    ],
)
def test_inbox_bounds_that_cannot_be_meant_stop_the_server_with_the_flag_named(setting, value, flag):
    from graft.errors import GraftError
    from graft.serve.settings import ServeSettings

    with pytest.raises(GraftError, match=flag):
        ServeSettings(**{setting: value}).validate()


def test_a_disk_that_fails_midway_leaves_the_inbox_as_it_was(served, tmp_path, monkeypatch):
    import errno

    import graft.rounds.inbox as inbox

    _, app = served
    assert send(app, "cup", [photo(1)]).status_code == 200
    before = tree(tmp_path)
    real, calls = os.replace, []

    def failing(source, target):
        calls.append(target)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(source, target)

    monkeypatch.setattr(inbox.os, "replace", failing)
    response = send(app, "plate", [photo(1), photo(2), photo(3)])  # one relabel, two new: the third rename fails
    assert (response.status_code, response.json()["code"]) == (507, "storage_error")
    assert "No space left" in response.json()["detail"]
    assert tree(tmp_path) == before


def test_a_client_file_name_is_never_a_path(served, tmp_path):
    """The multipart file name is ignored: only the content hash names the stored file."""
    project, app = served
    outside = tree(tmp_path / "proj" / "rounds")
    parts = [("file", ("../../../evil.png", photo(4), "image/png")), ("file", ("/etc/passwd", photo(5), "image/png"))]
    response = request(app, "POST", "/v1/samples", data={"label": "cup"}, files=parts, headers=AUTH)
    assert response.status_code == 200, response.text
    stored = sorted(p.name for p in (project / "inbox").rglob("*.png"))
    assert stored == sorted(f"{item['sha256']}.png" for item in response.json()["saved"])
    assert tree(tmp_path / "proj" / "rounds") == outside and not (tmp_path / "evil.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["proj"]


def test_a_burst_sent_with_a_group_lands_on_one_side(served):
    """Photos of a burst are near-copies: with `group`, all of them are train or all test, whatever their hashes."""
    from graft.rounds.inbox import group_split

    _, app = served
    groups = {side: next(f"burst-{n}" for n in range(1000) if group_split("cup", f"burst-{n}") == side)
              for side in ("train", "test")}  # fmt: skip
    burst = [photo(s) for s in range(10)]
    assert {split_of(pixel_sha256(decode_image(b))) for b in burst} == {"train", "test"}  # per photo: both sides
    for side, seeds in (("test", range(10)), ("train", range(10, 20))):
        response = send(app, "cup", [photo(s) for s in seeds], data_extra={"group": groups[side]})
        assert response.status_code == 200, response.text
        assert {item["split"] for item in response.json()["saved"]} == {side}
    assert request(app, "GET", "/v1/samples", headers=AUTH).json()["counts"] == {"cup": {"train": 10, "test": 10}}


@pytest.mark.parametrize("group", ["../x", "a/b", ".hidden", "", "x" * 65, "ünï", "two words"])
def test_a_group_that_is_not_a_plain_id_is_refused(served, tmp_path, group):
    _, app = served
    before = tree(tmp_path)
    response = send(app, "cup", [photo(0)], data_extra={"group": group})
    assert (response.status_code, response.json()["code"]) == (422, "invalid_group"), response.text
    assert tree(tmp_path) == before
