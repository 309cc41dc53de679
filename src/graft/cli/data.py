"""`graft data`: make data sets (frames from phone videos, the clutter benchmark); registered as a group."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from graft.errors import GraftError
from graft.progress import console

data_app = typer.Typer(
    name="data",
    help="Make data sets: frames from phone videos, the clutter benchmark.",
    short_help="Make data sets: video frames, clutter benchmark.",
    no_args_is_help=True,
    rich_markup_mode=None,
)


@data_app.command("frames", short_help="Extract upright PNG frames from phone videos.")
def frames_command(
    videos: Annotated[
        list[Path],
        typer.Argument(
            help="Video files (MP4, MOV, WebM, …), or folders of them with one sub-folder per class.",
            show_default=False,
        ),
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Data set folder (e.g. photos/train); created when missing.")
    ],
    label: Annotated[
        str | None,
        typer.Option(
            "--label",
            "-l",
            help="Class name: frames of every video go to OUTPUT/LABEL/. Without it, each class sub-folder's name.",
        ),
    ] = None,
    every: Annotated[int | None, typer.Option(help="Keep every Nth frame. [default: 1, all]")] = None,
    fps: Annotated[float | None, typer.Option(help="Keep about F frames per second of video instead.")] = None,
    size: Annotated[
        int | None,
        typer.Option(
            "--size", "-s", help="Shorter side in pixels, aspect kept; with --crop center, S×S. [default: as recorded]"
        ),
    ] = None,
    crop: Annotated[
        str, typer.Option(metavar="<none|center>", help="none, or center: the largest centred square.")
    ] = "none",
    limit: Annotated[int | None, typer.Option(help="At most this many frames per video.")] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace frames an earlier run wrote for these videos.")
    ] = False,
) -> None:
    """Extract frames from phone videos into class folders, upright, as PNG (VIDEO-f000123.png).

    Several classes in one call: without --label, give folders with one sub-folder of videos per class
    (videos/cup/a.mp4 → OUTPUT/cup/a-f000000.png, videos/ball/b.mov → OUTPUT/ball/…).

    \b
    Examples:
      graft data frames cup1.mp4 cup2.mov --label cup -o photos/train --every 10 --size 128
      graft data frames videos/ -o photos/train --fps 2 --size 128   # videos/cup/*.mp4, videos/ball/*.mov, …
      graft data frames cup3.mp4 --label cup -o photos/test --fps 2 --size 128 --crop center
    """
    from graft.data.video import extract_frames

    by_class = videos_by_class(videos, label)
    results = [
        extract_frames(
            files,
            label=name,
            out=output,
            every=every,
            fps=fps,
            size=size,
            crop=crop,
            limit=limit,
            overwrite=force,
            console=console(),
        )
        for name, files in by_class.items()
    ]
    for result in results:
        _print_frames(result)
    if len(results) > 1:
        total = sum(result.written for result in results)
        print(f"{total} frames written into {len(results)} class folders: {', '.join(by_class)}")


VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".m4v", ".webm", ".mkv", ".avi", ".3gp"})


def _videos_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)


def videos_by_class(paths: list[Path], label: str | None) -> dict[str, list[Path]]:
    """Class name → its videos. With `label`, every video (and every video in a folder given) is that class;
    without, each path must be a folder with one sub-folder of videos per class, as a `folder:` data set is laid
    out. A loose video without a label is refused rather than named after whatever folder it happens to be in.
    Every path is checked before any frame is written."""
    groups: dict[str, list[Path]] = {}
    for path in paths:
        if not path.exists():
            raise GraftError(f"video not found: {path}")
        if label is not None:
            found = _videos_in(path) if path.is_dir() else [path]
            if not found:
                raise GraftError(f"{path} holds no videos ({', '.join(sorted(VIDEO_SUFFIXES))})")
            groups.setdefault(label, []).extend(found)
            continue
        if not path.is_dir():
            raise GraftError(
                f"which class is {path}? give --label CLASS, or a folder with one sub-folder of videos per class"
            )
        loose = _videos_in(path)
        if loose:
            raise GraftError(
                f"{len(loose)} videos directly in {path} ({loose[0].name}, …) have no class: move them into a "
                "sub-folder named after their class, or give --label"
            )
        classes = {sub.name: _videos_in(sub) for sub in sorted(path.iterdir()) if sub.is_dir()}
        classes = {name: found for name, found in classes.items() if found}
        if not classes:
            raise GraftError(f"{path} has no sub-folders with videos ({', '.join(sorted(VIDEO_SUFFIXES))})")
        for name, found in classes.items():
            groups.setdefault(name, []).extend(found)
    return groups


def _print_frames(result) -> None:
    for video in result.videos:
        applied = [f"turned {video.rotation}°"] * bool(video.rotation) + ["mirrored"] * video.flipped
        print(
            f"{video.video}: {video.written} frames written, {video.skipped} skipped "
            f"({', '.join([f'{video.width}×{video.height}', *applied])})"
        )
        for note in video.notes[:3]:
            print(f"  note: FFmpeg reported: {note}")
    if len(result.videos) > 1:
        print(f"{result.written} frames written, {result.skipped} skipped, from {len(result.videos)} videos")
    print(f"class folder: {result.folder}")


@data_app.command("clutter", short_help="Build the clutter benchmark: busier backgrounds.")
def clutter_command(
    source: Annotated[str, typer.Argument(help="Digit source: digits, mnist, fashion-mnist, kmnist or folder:PATH.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Benchmark folder: level-1 … level-L inside.")],
    levels: Annotated[int, typer.Option(help="Levels, from plain (1) to heavy clutter (L).")] = 6,
    seed: Annotated[int, typer.Option(help="Seeds the partition and every random choice.")] = 0,
    size: Annotated[int, typer.Option("--size", "-s", help="Square image size in pixels.")] = 32,
    max_train: Annotated[int | None, typer.Option(help="At most this many training images per level.")] = None,
    max_test: Annotated[int | None, typer.Option(help="At most this many test images per level.")] = None,
    reuse_images: Annotated[
        bool,
        typer.Option("--reuse-images", help="Render every source image at every level (default: each at one level)."),
    ] = False,
    preview: Annotated[bool, typer.Option("--preview/--no-preview", help="Write preview.png.")] = True,
    data_root: Annotated[str | None, typer.Option(help="Where data sets are looked for.")] = None,
    offline: Annotated[bool, typer.Option("--offline", help="Never download data.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing clutter benchmark.")] = False,
) -> None:
    """Build the clutter benchmark: a digit source on ever busier backgrounds, one folder: data set per level.

    \b
    Level 1 is the plain source; then gradients, noise, textures, distractor strokes and colour are added.
    Examples:
      graft data clutter digits -o clutter-digits
      graft data clutter mnist -o clutter-mnist --levels 6 --max-train 5000 --seed 1
      graft train --data folder:clutter-mnist/level-1 --size 32
    """
    from graft.data.clutter import make_clutter

    result = make_clutter(
        source,
        output,
        levels=levels,
        seed=seed,
        size=size,
        max_train=max_train,
        max_test=max_test,
        reuse_images=reuse_images,
        data_root=data_root,
        download=not offline,
        overwrite=force,
        preview=preview,
        console=console(),
    )
    for level, counts in enumerate(result.counts, start=1):
        print(f"level {level}: {counts['train']} train, {counts['test']} test  →  folder:{output / f'level-{level}'}")
    extras = "clutter.json, preview.png" if preview else "clutter.json"
    print(f"wrote {output} ({extras}) in {result.seconds:.1f} s")
