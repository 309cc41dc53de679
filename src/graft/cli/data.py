"""`graft data`: make data sets (frames from phone videos, the clutter benchmark); registered as a group."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from graft.progress import console

data_app = typer.Typer(
    name="data",
    help="Make data sets: frames from phone videos, the clutter benchmark.",
    no_args_is_help=True,
    rich_markup_mode=None,
)


@data_app.command("frames")
def frames_command(
    videos: Annotated[
        list[Path], typer.Argument(help="Video files (MP4, MOV, WebM, …); frames of all go to one class.")
    ],
    label: Annotated[str, typer.Option("--label", "-l", help="Class name: frames go to OUTPUT/LABEL/.")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Data set folder (e.g. photos/train); created when missing.")
    ],
    every: Annotated[int | None, typer.Option(help="Keep every Nth frame. [default: 1, all]")] = None,
    fps: Annotated[float | None, typer.Option(help="Keep about F frames per second of video instead.")] = None,
    size: Annotated[
        int | None,
        typer.Option(
            "--size", "-s", help="Shorter side in pixels, aspect kept; with --crop center, S×S. [default: as recorded]"
        ),
    ] = None,
    crop: Annotated[str, typer.Option(help="none, or center: the largest centred square.")] = "none",
    limit: Annotated[int | None, typer.Option(help="At most this many frames per video.")] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace frames an earlier run wrote for these videos.")
    ] = False,
) -> None:
    """Extract frames from phone videos into a class folder, upright, as PNG (VIDEO-f000123.png).

    \b
    Examples:
      graft data frames cup1.mp4 cup2.mov --label cup -o photos/train --every 10 --size 128
      graft data frames cup3.mp4 --label cup -o photos/test --fps 2 --size 128 --crop center
    """
    from graft.data.video import extract_frames

    result = extract_frames(
        videos,
        label=label,
        out=output,
        every=every,
        fps=fps,
        size=size,
        crop=crop,
        limit=limit,
        overwrite=force,
        console=console(),
    )
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


@data_app.command("clutter")
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
