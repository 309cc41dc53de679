"""`graft rounds train` and `graft rounds status`: train pending rounds in order, measure, gate, report.

Round k (k > 1) continues round k-1's bundle (`--weights`: same architecture and input spec, classifier rows
follow the class names of its data, new classes imprinted) with the LR schedule started afresh. Afterwards its
model is evaluated on the test split of every round so far: row k of the accuracy matrix.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from rich.console import Console

from graft import record as bundle_record
from graft.bundle import Bundle, load
from graft.data.base import ImageSet
from graft.data.sources import load_source
from graft.errors import GraftError, Interrupted
from graft.evaluation import evaluate_model
from graft.io import atomic_write_json
from graft.lock import is_locked
from graft.progress import console as default_console
from graft.rounds import gate, metrics, project, report, selection
from graft.training import RESUME_MAY_CHANGE, is_unfinished, training_device
from graft.training import train as train_model


def _paths(directory: Path, entry: dict) -> tuple[Path, Path, Path]:
    base = directory / entry["dir"]
    return base, base / "run", base / "bundle"


def test_accuracy(bundle: Bundle, images: ImageSet, *, batch_size: int = 256, device: str | None = None) -> float:
    """Accuracy on `images`, classes matched by name; images of classes the model does not know count as wrong."""
    known = np.array([name in bundle.classes for name in images.classes], dtype=bool)
    keep = np.flatnonzero(known[images.labels])
    if len(images) == 0:
        return float("nan")
    if len(keep) == 0:
        return 0.0
    mapping = np.array([bundle.classes.index(c) if c in bundle.classes else 0 for c in images.classes])
    where = training_device(device)  # where training ran: cuda when there is one, unless told
    result = evaluate_model(
        bundle.model.to(where),
        bundle.spec,
        images.subset(keep),
        classes=bundle.classes,
        label_map=mapping,
        batch_size=batch_size,
        workers=0,
        device=where,
    )
    return float((result.predicted == result.labels).sum()) / len(images)


def _round_settings(state: dict, k: int, directory: Path) -> dict:
    """The project's settings with the round's own on top; after round 1, the previous round's bundle as weights."""
    settings = {**state["settings"], **state["rounds"][k].get("settings", {})}
    if k > 0:
        previous = state["rounds"][k - 1]
        settings = {key: value for key, value in settings.items() if key not in project.ARCHITECTURE_KEYS}
        settings["weights"] = str(_paths(directory, previous)[2])
    return settings


def _finished_before(bundle_dir: Path, entry: dict) -> bool:
    """A bundle this very round wrote before a crash kept it from being measured (not one left by anything else)."""
    try:
        data = bundle_record.read(bundle_dir).provenance.data
    except GraftError:
        return False
    return data is not None and data.source == entry["training_data"]["source"]


def _train_round(directory: Path, state: dict, k: int, out: Console, overrides: dict) -> None:
    entry = state["rounds"][k]
    base, run_dir, bundle_dir = _paths(directory, entry)
    if not is_unfinished(run_dir) and _finished_before(bundle_dir, entry):
        out.print(f"round {k + 1} ({entry['name']}): already trained, measuring it")
        return
    try:
        if is_unfinished(run_dir):
            out.print(f"round {k + 1} ({entry['name']}): resuming {run_dir}")
            train_model(resume=run_dir, console=out, **overrides)
            return
        parts = selection.training_parts(
            [r["data"] for r in state["rounds"]],
            k,
            entry["mode"],
            replay=entry.get("replay"),
            seed=int(state["settings"].get("seed", 0)),
        )
        mix_file = base / "data.json"
        atomic_write_json(mix_file, {"parts": parts})
        data = selection.data_source(parts, str(mix_file.resolve()))
        entry["training_data"] = {"source": data, "parts": parts}
        project.write(directory, state)
        described = ", ".join(
            f"{p['source']}" + (f" ×{p['fraction']:g} (seed {p['seed']})" if p["fraction"] < 1 else "") for p in parts
        )
        out.print(f"round {k + 1} ({entry['name']}, {entry['mode']}): training on {described}")
        settings = {**_round_settings(state, k, directory), **overrides}
        train_model(data=data, run_dir=str(run_dir), output=str(bundle_dir), force=True, console=out, **settings)
    except Interrupted as error:
        raise Interrupted(
            f"round {k + 1} ({entry['name']}) stopped ({error}); continue with `graft rounds train {directory}`",
            signum=error.signum,
        ) from None


def train(
    directory: str | Path,
    *,
    max_forgetting: float | None = None,
    min_accuracy: float | None = None,
    max_accuracy_drop: float | None = None,
    max_forgetting_per_round: float | None = None,
    console: Console | None = None,
    **overrides: object,
) -> dict:
    """Train every pending round in order (resuming an interrupted one), then measure and gate each.

    `max_forgetting`, `min_accuracy`, `max_accuracy_drop` and `max_forgetting_per_round` override the project's
    gate for this call (None: the project's); `overrides` (threads, workers, device) change how the work is done,
    never what is trained.
    """
    directory = Path(directory).resolve()  # run configs hold absolute paths: resuming works from anywhere
    out = console or default_console()
    state = project.read(directory)
    limits = dict(
        max_forgetting=max_forgetting,
        min_accuracy=min_accuracy,
        max_accuracy_drop=max_accuracy_drop,
        max_forgetting_per_round=max_forgetting_per_round,
    )
    project.thresholds(state, **limits)  # checked before anything trains
    given = {key: value for key, value in overrides.items() if value is not None}
    if set(given) - RESUME_MAY_CHANGE:
        raise GraftError(
            f"rounds train only changes {', '.join(sorted(RESUME_MAY_CHANGE))}; settings belong to `rounds init`, "
            "or to one round (`rounds add` or `rounds redo` with --epochs, --lr, …)"
        )
    if not state["rounds"]:
        raise GraftError(f"{directory} has no rounds; add one with `graft rounds add {directory} NAME --data SOURCE`")
    tests: dict[int, ImageSet] = {}
    with project.locked(directory):
        state = project.finish_archiving(directory, project.read(directory))
        for k, entry in enumerate(state["rounds"]):
            if entry["status"] != "pending":
                continue
            _train_round(directory, state, k, out, given)
            gate_now = project.thresholds(state, **limits)
            _measure_and_gate(directory, state, k, gate_now, tests, out, given.get("device"))
            _write_report(directory, state)
    return status(directory)


def _measure_and_gate(
    directory: Path,
    state: dict,
    k: int,
    limits: gate.Thresholds,
    tests: dict[int, ImageSet],
    out: Console,
    device: str | None,
) -> None:
    """Row k of the accuracy matrix, its metrics, the gate's decision; `current.json` moves when promoted."""
    entry = state["rounds"][k]
    bundle = load(_paths(directory, entry)[2])
    group_by = str(state["settings"]["group_by"])  # project.read fills it in for older projects
    for j in range(k + 1):
        if j not in tests:
            source = state["rounds"][j]["data"]
            tests[j] = load_source(source, state["settings"].get("data_root"), group_by=group_by)[1]
    row = [test_accuracy(bundle, tests[j], device=device) for j in range(k + 1)]
    entry["accuracy"] = row
    matrix = metrics.matrix_from_rows([r["accuracy"] for r in state["rounds"][: k + 1]])
    entry["metrics"] = metrics.summary(matrix, k)
    current_name, current_average = _current_average(directory, state, k, tests, device)
    evidence = gate.Evidence(
        own_accuracy=row[k],
        classes=len(tests[k].classes),
        average=entry["metrics"]["average_accuracy"],
        forgetting=entry["metrics"]["forgetting"],
        current_average=current_average,
        current=current_name,
        forgetting_per_round=tuple(entry["metrics"]["forgetting_per_round"]),
        earlier=tuple(r["name"] for r in state["rounds"][:k]),
    )
    decision = gate.decide(evidence, limits)
    entry["status"] = "promoted" if decision.promoted else "rejected"
    entry["gate"] = {
        "promoted": decision.promoted,
        "why": decision.why,
        "refused_by": decision.refused_by,
        "current_average": current_average,
        **{key: getattr(limits, key) for key in project.GATE_KEYS},
    }
    if decision.promoted:  # the bundle is complete on disk before current.json names it
        project.set_current(directory, state, k, decision.why)
    project.write(directory, state)
    verdict = "promoted to current" if decision.promoted else "NOT promoted (current unchanged)"
    out.print(
        f"round {k + 1} ({entry['name']}): accuracy on rounds 1..{k + 1}: "
        + ", ".join(f"{a:.1%}" for a in row)
        + f"; {verdict}: {decision.why}",
        markup=False,
    )


def _current_average(
    directory: Path, state: dict, k: int, tests: dict[int, ImageSet], device: str | None
) -> tuple[str | None, float | None]:
    """(name, mean accuracy over rounds 1..k's test splits) of the bundle serving now, or (None, None) without one.

    Its accuracies on rounds up to its own come from its row of the matrix; later rounds' splits (rejected rounds
    and round k) are measured now, so both sides of the comparison use the same splits."""
    pointer = project.read_current(directory)
    if pointer is None or not 1 <= pointer.get("index", 0) <= k:
        return None, None
    c = pointer["index"] - 1
    entry = state["rounds"][c]
    known = list(entry.get("accuracy") or [])[: c + 1]
    if len(known) != c + 1:
        return None, None
    bundle = load(directory / pointer["bundle"])
    later = [test_accuracy(bundle, tests[j], device=device) for j in range(c + 1, k + 1)]
    return entry["name"], float(np.mean(known + later))


def _trained(state: dict) -> list[dict]:
    return [r for r in state["rounds"] if r["status"] != "pending"]


def _write_report(directory: Path, state: dict) -> None:
    summary = _summary(directory, state)
    names = [r["name"] for r in summary["rounds"] if r["accuracy"] is not None]
    report.write_report(directory, summary, names, _as_array(summary["matrix"]))


def _as_array(matrix: list[list[float | None]]) -> np.ndarray:
    """The summary's JSON matrix (None for rounds not measured) as floats with NaN."""
    return np.array([[np.nan if v is None else v for v in row] for row in matrix], dtype=float).reshape(
        len(matrix), len(matrix)
    )


def _summary(directory: Path, state: dict) -> dict:
    trained = _trained(state)
    rounds = []
    for k, entry in enumerate(state["rounds"]):
        _, run_dir, _ = _paths(directory, entry)
        status_now = entry["status"]
        if status_now == "pending" and is_locked(run_dir):
            status_now = "training"  # a train process holds its run directory now
        elif status_now == "pending" and is_unfinished(run_dir):
            status_now = "interrupted"
        rounds.append(
            {
                "round": k + 1,
                "name": entry["name"],
                "data": entry["data"],
                "mode": entry["mode"],
                "replay": entry.get("replay"),
                "settings": entry.get("settings", {}),
                "status": status_now,
                "accuracy": entry.get("accuracy"),
                "metrics": entry.get("metrics"),
                "worst_forgotten": _worst_forgotten(state["rounds"], k, entry.get("metrics")),
                "gate": entry.get("gate"),
                "bundle": f"{entry['dir']}/bundle" if entry["status"] != "pending" else None,
            }
        )
    matrix = metrics.matrix_from_rows([r["accuracy"] for r in trained])
    final = trained[-1]["metrics"] if trained else None
    return {
        "directory": str(directory),
        "settings": state["settings"],
        "max_forgetting": state.get("max_forgetting"),
        "gate": dataclasses.asdict(project.thresholds(state)),
        "rounds": rounds,
        "matrix": [[None if np.isnan(v) else float(v) for v in row] for row in matrix],
        "final": final,
        "current": project.read_current(directory),
    }


def _worst_forgotten(entries: list[dict], k: int, measured: dict | None) -> dict | None:
    """The earlier round round k forgot most ({"round", "name", "forgetting"}), or None: what an average hides."""
    per_round = (measured or {}).get("forgetting_per_round") or []
    worst = gate.worst_round(per_round)
    if worst is None or k < len(per_round):
        return None
    j, value = worst
    return {"round": j + 1, "name": entries[j]["name"], "forgetting": value if np.isfinite(value) else None}


def status(directory: str | Path) -> dict:
    """The rounds, their state, the accuracy matrix and metrics, and which bundle is current and why."""
    directory = Path(directory)
    return _summary(directory, project.read(directory))


def status_lines(summary: dict) -> list[str]:
    """`graft rounds status` as text."""
    lines = []
    for r in summary["rounds"]:
        how = r["mode"] + (f" {r['replay']:g}" if r["replay"] else "")
        how += "".join(f" {key}={value}" for key, value in r.get("settings", {}).items())
        why = f" — {r['gate']['why']}" if r.get("gate") else ""
        lines.append(f"{r['round']:>2}. {r['name']:<16} {r['status']:<11} {how:<12} {r['data']}{why}")
        worst = r.get("worst_forgotten")
        if worst is not None:
            value = "not measured" if worst["forgetting"] is None else f"{worst['forgetting']:.1%}"
            lines.append(f"    worst forgotten: round {worst['round']} ({worst['name']}) {value}")
    trained = [r for r in summary["rounds"] if r["accuracy"] is not None]
    if trained:
        names = [r["name"] for r in trained]
        lines += ["", "accuracy matrix (row: model after round; column: test split of round)"]
        lines += report.matrix_table(names, _as_array(summary["matrix"]))
        lines += ["", *report.metrics_table(names, [r["metrics"] for r in trained])]
    current = summary["current"]
    gate_text = "gate: " + gate.Thresholds(**summary["gate"]).describe()
    if current:
        lines += ["", f"current: round {current['index']} ({current['round']}) {current['bundle']} — {current['why']}"]
    else:
        lines += ["", "current: none yet"]
    lines.append(gate_text)
    rejected = [r for r in summary["rounds"] if r["status"] == "rejected"]
    if rejected:
        name = rejected[-1]["name"]
        lines.append(
            f"to train {name!r} again (it and later rounds go back to pending, their folders archived): "
            f"graft rounds redo {summary['directory']} {name} --replay 0.3 (or --union, --epochs N, --lr LR)"
        )
    return lines
