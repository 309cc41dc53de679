"""Training in rounds: warm-started rounds on growing data, an accuracy matrix, forgetting and a promotion gate.

    import graft.rounds as rounds
    rounds.init("proj", model="resnet18", input_mode="fold", size=32, epochs=3, max_forgetting=0.05)
    rounds.add("proj", "level-1", data="folder:clutter/level-1")
    rounds.add("proj", "level-2", data="folder:clutter/level-2")          # union of rounds 1..2 (default)
    rounds.add("proj", "level-3", data="folder:clutter/level-3", replay=0.2)
    rounds.train("proj")
    rounds.status("proj")
    rounds.redo("proj", "level-3", mode="replay", replay=0.5, settings={"epochs": 4})  # e.g. after a rejection

Layering: rounds sits above train, data and evaluate; nothing below imports it.

Names load on first use (graft._lazy): `graft.rounds.project.resolve_bundle`, which every command that takes a
bundle calls, needs no torch.
"""

from typing import TYPE_CHECKING

from graft import _lazy

if TYPE_CHECKING:
    from graft.rounds.intake import add_from_inbox
    from graft.rounds.project import add, init, redo
    from graft.rounds.run import status, train

__all__ = ["add", "add_from_inbox", "init", "redo", "status", "train"]

__getattr__, __dir__ = _lazy.exports(
    __name__,
    {
        "add": "graft.rounds.project",
        "add_from_inbox": "graft.rounds.intake",
        "init": "graft.rounds.project",
        "redo": "graft.rounds.project",
        "status": "graft.rounds.run",
        "train": "graft.rounds.run",
    },
)
