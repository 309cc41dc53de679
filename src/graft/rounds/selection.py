"""Which data a round trains on: the union of all rounds so far, the new round plus a replay sample, or only it.

Pure functions: a round's choice becomes a list of parts for a `mix:` source file (`graft.data.mix`), so the
run's config.json names a file that rebuilds exactly the same training set. Replay samples are seeded from the
project seed, the round and the replayed round, and the seed is written into the file.
"""

from __future__ import annotations

from typing import Literal

from graft.errors import GraftError

Mode = Literal["union", "replay", "naive"]


def replay_seed(seed: int, round_index: int, replayed: int) -> int:
    """A distinct, reproducible seed for each (round, replayed round) pair."""
    return seed + 1000 * round_index + replayed


def training_parts(sources: list[str], k: int, mode: Mode, *, replay: float | None = None, seed: int = 0) -> list[dict]:
    """The parts round k (0-based) trains on, given every round's data source in order.

    union: rounds 0..k in full; naive: round k only; replay: round k in full plus a seeded, stratified sample of
    `replay` × each earlier round's training pool.
    """
    if not 0 <= k < len(sources):
        raise GraftError(f"round {k + 1} does not exist ({len(sources)} rounds)")
    if mode == "naive":
        return [{"source": sources[k], "fraction": 1.0}]
    if mode == "union":
        return [{"source": source, "fraction": 1.0} for source in sources[: k + 1]]
    if mode == "replay":
        if replay is None or not 0 < replay <= 1:
            raise GraftError(f"--replay takes a fraction in (0, 1], got {replay}")
        earlier = [
            {"source": source, "fraction": replay, "seed": replay_seed(seed, k, j)}
            for j, source in enumerate(sources[:k])
        ]
        return [*earlier, {"source": sources[k], "fraction": 1.0}]
    raise GraftError(f"unknown round mode {mode!r}; choose union, replay or naive")


def data_source(parts: list[dict], mix_file: str) -> str:
    """The source string for `graft.train`: the source itself when it is one whole part, else the mix file."""
    if len(parts) == 1 and parts[0]["fraction"] >= 1.0:
        return parts[0]["source"]
    return f"mix:{mix_file}"
