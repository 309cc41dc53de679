"""`graft rounds`: warm-started training rounds on growing data, with a promotion gate; registered as a group.

The training settings these commands take are generated from `TrainConfig` (graft.cli.options), as `graft train`'s
are: `init` takes the project's settings, `add` and `redo` a round's own, `train` only how the work is done.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from graft.cli.options import config_options
from graft.errors import GraftError
from graft.io import json_text

rounds_app = typer.Typer(
    name="rounds",
    help="Train in rounds: warm-started rounds on growing data, accuracy matrix, forgetting, promotion gate.",
    short_help="Train in rounds, with a forgetting gate.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

PROJECT_SETTINGS = (
    "model", "input_mode", "size", "pretrained", "weights", "epochs", "batch_size", "lr", "schedule", "strategy",
    "augment", "precision", "seed", "max_train", "data_root", "group_by",
)  # fmt: skip
"""The training settings `rounds init` takes as flags (any other comes from its --recipe)."""

ROUND_SETTINGS = ("epochs", "lr", "schedule", "strategy", "augment")
"""The settings `rounds add` and `rounds redo` take for one round; the others are the project's."""

WORK_SETTINGS = ("threads", "workers", "device")
"""What `rounds train` may change: how the work is done, never what is trained (graft.rounds.run)."""

# Where a project setting means something narrower than in `graft train`.
_PROJECT_HELP = {
    "pretrained": "Round 1 starts from 'imagenet' timm weights.",
    "weights": "Round 1 starts from these weights or this bundle.",
    "seed": "Seeds splits, training and replay samples.",
    "max_train": "At most this many training images per round.",
}


@rounds_app.command("init", short_help="Create a rounds project: settings and gate.")
@config_options(*PROJECT_SETTINGS, before="max_forgetting", help_for=_PROJECT_HELP)
def rounds_init_command(
    directory: Annotated[Path, typer.Argument(help="Project directory (created).")],
    recipe: Annotated[
        Path | None, typer.Option(help="TOML recipe with training settings for every round; flags override it.")
    ] = None,
    max_forgetting: Annotated[
        float,
        typer.Option(help="Promotion gate: a round forgetting more than this on earlier rounds is not promoted."),
    ] = 0.05,
    min_accuracy: Annotated[
        float | None,
        typer.Option(
            help="Promotion gate: a round scoring less on its own test split is not promoted. [default: better "
            "than chance, 1/classes]"
        ),
    ] = None,
    max_accuracy_drop: Annotated[
        float,
        typer.Option(
            help="Promotion gate: a round whose average accuracy over all rounds' test splits is more than this "
            "below the current bundle's (same splits) is not promoted."
        ),
    ] = 0.0,
    max_forgetting_per_round: Annotated[
        float | None,
        typer.Option(
            help="Promotion gate: a round forgetting more than this of any ONE earlier round is not promoted "
            "(the average of --max-forgetting can hide one badly forgotten round). [default: off]"
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Start an existing project again (its old rounds move to DIR/archive/).")
    ] = False,
    **settings: Any,
) -> None:
    """Create a rounds project: the training settings every round uses, and the promotion gate.

    \b
    Examples:
      graft rounds init proj --model resnet18 --input-mode fold --size 32 --epochs 3 --max-forgetting 0.05
      graft rounds add proj level-1 --data folder:clutter/level-1
      graft rounds train proj && graft rounds status proj
    """
    from graft.rounds import init
    from graft.rounds.gate import Thresholds
    from graft.training.config import recipe_settings

    limits = dict(
        max_forgetting=max_forgetting,
        min_accuracy=min_accuracy,
        max_accuracy_drop=max_accuracy_drop,
        max_forgetting_per_round=max_forgetting_per_round,
    )
    chosen = recipe_settings(recipe, **settings)
    if "force" in chosen:  # a TrainConfig key, but each round writes its own new bundle: it would mean nothing
        raise GraftError(
            f"{recipe}: 'force' does not apply to a rounds project (each round writes its own bundle); "
            "to start an existing project again, pass --force to `graft rounds init`"
        )
    init(directory, **limits, force=force, **chosen)
    print(f"rounds project: {directory} (gate: {Thresholds(**limits).describe()}); add rounds with `graft rounds add`")


# A round's own recipe, shared by `rounds add` and `rounds redo`.
RoundRecipe = Annotated[Path | None, typer.Option(help="TOML recipe with this round's own training settings.")]


@rounds_app.command("add", short_help="Add a round: its data and how it trains.")
@config_options(*ROUND_SETTINGS, shown_default="the project's")
def rounds_add_command(
    directory: Annotated[Path, typer.Argument(help="Rounds project directory.")],
    name: Annotated[str, typer.Argument(help="Round name, e.g. level-2.")],
    data: Annotated[
        str | None, typer.Option("--data", "-d", help="The round's data: digits, mnist, folder:PATH, …")
    ] = None,
    inbox: Annotated[
        bool,
        typer.Option(
            "--inbox",
            help="The round's data is the project's inbox: the photos sent from the phone (POST /v1/samples), "
            "moved to DIR/samples/NAME/.",
        ),
    ] = False,
    replay: Annotated[
        float | None,
        typer.Option(help="Train on this round plus this fraction of each earlier round (seeded sample)."),
    ] = None,
    naive: Annotated[bool, typer.Option("--naive", help="Train on this round only (for comparison).")] = False,
    recipe: RoundRecipe = None,
    **settings: Any,
) -> None:
    """Add a round; by default it trains on the union of all rounds so far, with the project's settings.

    The training flags below set this round's own.
    \b
    Examples:
      graft rounds add proj level-2 --data folder:clutter/level-2
      graft rounds add proj kitchen-1 --inbox      # the photos taught on the phone page
    """
    from graft.training.config import recipe_settings

    if (data is None) == (not inbox):
        raise GraftError("give the round's data: --data SOURCE, or --inbox for the photos sent from the phone")
    own = recipe_settings(recipe, **settings)
    if inbox:
        from graft.rounds import add_from_inbox

        result = add_from_inbox(directory, name, replay=replay, naive=naive, settings=own)
        taken = result["taken"]
        photos = sum(c["train"] + c["test"] for c in taken.values())
        held = sum(c["test"] for c in taken.values())
        classes = ", ".join(f"{label} {c['train'] + c['test']}" for label, c in taken.items())
        print(f"round {result['index']}: {name} from the inbox: {photos} photos ({held} held out for test) — {classes}")
        if result["moved_to_train"]:
            classes = ", ".join(result["moved_to_train"])
            print(f"{classes}: every photo had fallen on the test side, so they are trained on instead")
        if len(result["untested"]) == len(taken):
            print("no photo was held out for test: the round holds out a fifth of them itself, photo by photo")
        elif result["untested"]:
            untested = ", ".join(result["untested"])
            print(f"no held-out photos of {untested}: this round's test split does not measure them")
        print(f"data: {result['data']}; train it with `graft rounds train {directory}`")
        return
    from graft.rounds import add

    state = add(directory, name, data, replay=replay, naive=naive, settings=own)  # type: ignore[arg-type]
    entry = state["rounds"][-1]
    print(f"round {len(state['rounds'])}: {entry['name']} ({entry['mode']}) {entry['data']}")


@rounds_app.command("redo", short_help="Train a round (and every later one) again.")
@config_options(*ROUND_SETTINGS, shown_default="the project's")
def rounds_redo_command(
    directory: Annotated[Path, typer.Argument(help="Rounds project directory.")],
    name: Annotated[str, typer.Argument(help="The round to train again (later rounds are redone too).")],
    union: Annotated[bool, typer.Option("--union", help="Train it on the union of all rounds so far.")] = False,
    replay: Annotated[
        float | None, typer.Option(help="Train it on itself plus this fraction of each earlier round.")
    ] = None,
    naive: Annotated[bool, typer.Option("--naive", help="Train it on itself only.")] = False,
    recipe: RoundRecipe = None,
    **settings: Any,
) -> None:
    """Put a round and every later one back to pending, to train them again (a rejected round with replay).

    \b
    Their folders move to DIR/archive/<time>/; current falls back to the newest promoted earlier round.
    The training flags below set the round's own settings.
    Example:
      graft rounds redo proj level-4 --replay 0.3 --epochs 3 && graft rounds train proj
    """
    from graft.rounds.project import redo
    from graft.training.config import recipe_settings

    if union + naive + (replay is not None) > 1:
        raise GraftError("--union, --replay and --naive exclude each other")
    mode = "union" if union else "naive" if naive else "replay" if replay is not None else None
    own = recipe_settings(recipe, **settings)
    state, archive = redo(directory, name, mode=mode, replay=replay, settings=own)  # type: ignore[arg-type]
    pending = [r["name"] for r in state["rounds"] if r["status"] == "pending"]
    print(f"pending again: {', '.join(pending)}" + (f"; earlier results moved to {archive}" if archive else ""))
    print(f"train them with `graft rounds train {directory}`")


@rounds_app.command("train", short_help="Train every pending round in order.")
@config_options(*WORK_SETTINGS)
def rounds_train_command(
    directory: Annotated[Path, typer.Argument(help="Rounds project directory.")],
    max_forgetting: Annotated[float | None, typer.Option(help="Gate for this call instead of the project's.")] = None,
    min_accuracy: Annotated[
        float | None, typer.Option(help="Own-test-split floor for this call instead of the project's.")
    ] = None,
    max_accuracy_drop: Annotated[
        float | None, typer.Option(help="Allowed average-accuracy drop for this call instead of the project's.")
    ] = None,
    max_forgetting_per_round: Annotated[
        float | None,
        typer.Option(help="Most forgetting of any one earlier round, for this call instead of the project's."),
    ] = None,
    **settings: Any,
) -> None:
    """Train every pending round in order (an interrupted one is resumed), measure, gate, report.

    Writes DIR/report.json and DIR/matrix.png; DIR/current.json names the promoted bundle.
    """
    from graft.rounds.run import status_lines, train

    summary = train(
        directory,
        max_forgetting=max_forgetting,
        min_accuracy=min_accuracy,
        max_accuracy_drop=max_accuracy_drop,
        max_forgetting_per_round=max_forgetting_per_round,
        **settings,
    )
    print("\n".join(status_lines(summary)))


@rounds_app.command("status", short_help="Rounds, accuracy matrix, metrics, current bundle.")
def rounds_status_command(
    directory: Annotated[Path, typer.Argument(help="Rounds project directory.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The rounds and their state, the accuracy matrix and metrics, and which bundle is current and why."""
    from graft.rounds.run import status, status_lines

    summary = status(directory)
    print(json_text(summary) if as_json else "\n".join(status_lines(summary)))
