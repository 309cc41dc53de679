"""Training the next round from the server: one `graft rounds train` subprocess at a time, its progress read off disk.

Why a subprocess running graft's own CLI rather than a thread: a crash, an out-of-memory kill or a runaway
library in training cannot take the server down, the GIL never competes with the event loop, so predictions
keep being answered, and the round is trained by exactly the code `graft rounds train` runs (checkpoints,
resume, gate, promotion), not a second path that could drift from it.

Everything the page shows is read from the project, never from the subprocess's memory:

    PROJECT/training.json   what the server was asked to do: {"round", "index", "want": "train"|"stop", ...}
    PROJECT/training.log    the subprocess's output (appended; its last line explains a failure)
    rounds/<k>-<name>/run/metrics.jsonl   one line per finished epoch (graft's own run history)
    rounds.json             the round's status and, once trained, the gate's decision

So a server restarted mid-round finds the unfinished round in `training.json` and resumes it from its last
checkpoint (`rounds train` does that for a pending round with a checkpoint); if another process already holds
the project's lock (a training child that outlived a crashed server, or a `graft rounds train` in a terminal),
it only reports and follows that one. The server switches to the promoted round by itself (`ModelHolder.watch`),
and at once when its own child promoted one.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from graft.cpus import available_cpus
from graft.errors import GraftError
from graft.io import atomic_write_json
from graft.lock import is_locked
from graft.rounds import project as rounds_project
from graft.training.checkpoint import is_unfinished
from graft.training.config import TrainConfig

log = logging.getLogger("graft.serve")

STATE_FILE = "training.json"
LOG_FILE = "training.log"
STOP_GRACE_S = 30.0  # after SIGINT, the time a child has to write its checkpoint before it is killed
_LOG_TAIL = 4000  # bytes of training.log read for a failure's last line
STOPPED_CODES = (130, 143, -signal.SIGINT, -signal.SIGTERM)  # asked to stop: its checkpoint stays for a resume

RoundMaker = Callable[[Path, str | None], str]
"""Turns the project's inbox into a new pending round (name or None for a default); returns its name."""


class TrainingBusy(GraftError):
    """A round is training already (here or in another process); one at a time."""


def now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def read_state(project: Path) -> dict | None:
    """`training.json`, or None when this server never trained here; a damaged file is reported, not trusted."""
    path = project / STATE_FILE
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise GraftError(f"{path} is damaged ({error}); delete it to train from the page again") from None
    if not isinstance(state, dict) or not isinstance(state.get("round"), str):
        raise GraftError(f"{path} is damaged: it does not name a round; delete it to train from the page again")
    return state


def write_state(project: Path, state: dict) -> None:
    atomic_write_json(project / STATE_FILE, state)


def _round(manifest: dict, name: str) -> tuple[int, dict] | None:
    for k, entry in enumerate(manifest["rounds"]):
        if entry["name"] == name:
            return k, entry
    return None


def _epochs(manifest: dict, entry: dict) -> int:
    """The round's planned epochs: its own setting, else the project's, else graft's default."""
    settings = {**manifest["settings"], **entry.get("settings", {})}
    return int(settings.get("epochs") or TrainConfig.model_fields["epochs"].default)


def _history(run_dir: Path) -> list[dict]:
    """The finished epochs of a run (metrics.jsonl), last record per epoch: a resumed run may repeat none, but
    a half-written last line (a kill mid-write) is skipped rather than trusted."""
    path = run_dir / "metrics.jsonl"
    by_epoch: dict[int, dict] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("epoch"), int):
            by_epoch[record["epoch"]] = record
    return [by_epoch[e] for e in sorted(by_epoch)]


def last_log_line(project: Path) -> str | None:
    """The last non-empty line the training subprocess wrote (its one-line GraftError, or how it stopped)."""
    try:
        with open(project / LOG_FILE, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - _LOG_TAIL))
            tail = handle.read().decode("utf-8", "replace")
    except OSError:
        return None
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    return lines[-1] if lines else None


def progress(project: Path, *, running: bool | None = None) -> dict[str, Any]:
    """What the page shows: state, round, epoch of epochs, ETA, latest accuracy, and the gate's decision once done.

    `running` says whether this server's own child is alive (None: unknown, e.g. another process trains).
    States: idle (nothing asked), training, measuring (epochs done; testing and gating), promoted, rejected,
    interrupted (stopped before the end: it resumes from its checkpoint when trained again) and failed.
    """
    state = read_state(project)
    if state is None:
        return {"state": "idle", "round": None, "note": "no round trained from this server yet"}
    manifest = rounds_project.read(project)
    found = _round(manifest, state["round"])
    if found is None:
        return {"state": "idle", "round": None, "note": f"round {state['round']!r} is no longer in the project"}
    k, entry = found
    run_dir = project / entry["dir"] / "run"
    history = _history(run_dir)
    epochs = _epochs(manifest, entry)
    done = len(history)
    seconds = [float(r.get("seconds") or 0.0) for r in history]
    answer: dict[str, Any] = {
        "round": entry["name"],
        "index": k + 1,
        "epoch": done,
        "epochs": epochs,
        "accuracy": history[-1].get("valid_acc") if history else None,
        "train_accuracy": history[-1].get("train_acc") if history else None,
        "eta_s": round(sum(seconds) / done * max(0, epochs - done), 1) if done and sum(seconds) > 0 else None,
        "started_at": state.get("started_at"),
        "finished_at": state.get("finished_at"),
        "gate": None,
    }
    held = running if running is not None else is_locked(project)
    if entry["status"] in ("promoted", "rejected"):
        answer.update(state=entry["status"], eta_s=0.0, gate=entry.get("gate"))
        answer["note"] = (entry.get("gate") or {}).get("why")
    elif held:
        measuring = done >= epochs
        answer["state"] = "measuring" if measuring else "training"
        answer["note"] = (
            "testing on every round's test split, then the gate decides"
            if measuring
            else None
            if done
            else "starting: loading the model and the round's data; the first epoch follows"
        )
    elif state.get("want") == "stop" or state.get("exit_code") in STOPPED_CODES:
        answer.update(state="interrupted", eta_s=None)
        where = "from its last checkpoint" if is_unfinished(run_dir) else "from the start (no epoch had ended)"
        answer["note"] = f"stopped before the end; train again to resume {where}"
    elif state.get("exit_code") is not None:
        answer.update(state="failed", eta_s=None, note=last_log_line(project) or "training stopped with an error")
    else:
        answer.update(state="interrupted", eta_s=None)
        answer["note"] = "not running (the server stopped during it); train again to resume"
    return answer


class TrainingWorker:
    """The one background training of a served rounds project: start, follow, stop, and pick up after a restart.

    `on_promoted` is awaited after this server's child promoted a round (the holder reloads at once).
    """

    def __init__(
        self,
        project: Path,
        make_round: RoundMaker,
        on_promoted: Callable[[], Any] | None = None,
        *,
        threads: int | None = None,
        command: list[str] | None = None,
    ) -> None:
        self.project = Path(project).resolve()
        self.make_round = make_round
        self.on_promoted = on_promoted
        self.threads = threads or max(1, available_cpus() // 2)  # the other half keeps answering phones
        self.command = command  # tests may replace the interpreter line; default: this Python's graft
        self.process: asyncio.subprocess.Process | None = None
        self.follower: asyncio.Task | None = None
        self._starting = False

    @property
    def running(self) -> bool:
        return self._starting or (self.follower is not None and not self.follower.done())

    def status(self) -> dict[str, Any]:
        own = self.process is not None and self.process.returncode is None
        answer = progress(self.project, running=True if own or self._starting else None)
        if self.running and answer["state"] in ("promoted", "rejected"):
            # decided, but not yet served: the page reports the decision once the new model answers
            answer.update(state="measuring", note="the gate decided; switching to the new round")
        answer["pid"] = self.process.pid if own and self.process else None
        return answer

    def _check_free(self) -> None:
        if self.running:
            raise TrainingBusy("a round is training already; one at a time (see GET /v1/training)")
        if is_locked(self.project):
            raise TrainingBusy(
                f"{self.project} is busy: another graft rounds command is changing it; wait for it to finish"
            )

    async def start(self, name: str | None = None) -> dict[str, Any]:
        """Train the project's pending round (an interrupted one resumes), or make one from the inbox first."""
        self._check_free()
        self._starting = True
        try:
            pending = [r["name"] for r in rounds_project.read(self.project)["rounds"] if r["status"] == "pending"]
            if pending and name is not None and name not in pending:
                raise GraftError(
                    f"round {pending[0]!r} is not trained yet: train it before adding {name!r} from the inbox"
                )
            round_name = pending[0] if pending else await asyncio.to_thread(self.make_round, self.project, name)
            await self._spawn(round_name, resumed=bool(pending))
        finally:
            self._starting = False
        return self.status()

    async def _spawn(self, round_name: str, *, resumed: bool) -> None:
        k, _ = _round(rounds_project.read(self.project), round_name) or (None, None)
        previous = read_state(self.project) if resumed else None
        state = {
            "round": round_name,
            "index": None if k is None else k + 1,
            "want": "train",
            "started_at": now(),
            "finished_at": None,
            "exit_code": None,
            "resumes": (previous or {}).get("resumes", -1) + 1 if previous else 0,
        }
        write_state(self.project, state)
        command = self.command or [sys.executable, "-m", "graft"]
        args = [*command, "rounds", "train", str(self.project), "--workers", "0", "--threads", str(self.threads)]
        with open(self.project / LOG_FILE, "ab") as output:
            output.write(f"\n== {now()} training round {round_name} from the server\n".encode())
            output.flush()
            self.process = await asyncio.create_subprocess_exec(
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=output,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the server's terminal reaches the server, which stops it
                env={**os.environ, "COLUMNS": "120", "NO_COLOR": "1"},
            )
        log.info("training round %s in process %d (log: %s)", round_name, self.process.pid, self.project / LOG_FILE)
        self.follower = asyncio.get_running_loop().create_task(self._follow(self.process))

    async def _follow(self, process: asyncio.subprocess.Process) -> None:
        code = await process.wait()
        state = read_state(self.project) or {}
        state.update(exit_code=code, finished_at=now())
        write_state(self.project, state)
        answer = progress(self.project, running=False)
        log.info("training round %s ended: %s (%s)", state.get("round"), answer["state"], answer.get("note"))
        if answer["state"] == "promoted" and self.on_promoted is not None:
            try:
                await self.on_promoted()
            except Exception:  # the watcher retries; the training result stands
                log.exception("could not switch to the promoted round at once")

    async def _adopt(self) -> None:
        """Follow a training another process holds (the project's lock) until it lets go."""
        while is_locked(self.project):
            await asyncio.sleep(1.0)
        answer = progress(self.project, running=False)
        if answer["state"] == "promoted" and self.on_promoted is not None:
            with contextlib.suppress(Exception):
                await self.on_promoted()

    async def recover(self) -> str:
        """At server start: resume a round this server was training when it stopped, or follow it if another
        process still trains it. Returns what was done, for the log."""
        try:
            state = read_state(self.project)
        except GraftError as error:
            return str(error)
        if state is None or state.get("want") != "train" or state.get("exit_code") not in (None, *STOPPED_CODES):
            return "nothing to resume"
        found = _round(rounds_project.read(self.project), state["round"])
        if found is None or found[1]["status"] != "pending":
            return "nothing to resume"
        if is_locked(self.project):
            self.follower = asyncio.get_running_loop().create_task(self._adopt())
            return f"round {state['round']} is training in another process; following it"
        await self._spawn(state["round"], resumed=True)
        return f"resuming round {state['round']} from its last checkpoint"

    async def stop(self, *, remember: bool = True) -> None:
        """Stop this server's training (SIGINT: the child writes its checkpoint and exits), killing it after
        STOP_GRACE_S. `remember=False` (server shutdown) leaves `want: train`, so the next start resumes it."""
        process = self.process
        if process is not None and process.returncode is None:
            if remember:
                state = read_state(self.project) or {}
                write_state(self.project, {**state, "want": "stop"})
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(process.wait(), STOP_GRACE_S)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        if self.follower is not None and not self.follower.done():
            if process is None:  # following another process's training: nothing of ours to wait for
                self.follower.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.follower


def default_round_name(project: Path) -> str:
    """`phone-<k>` for the project's k-th round (the first free one): rounds made from the page need no typing."""
    names = {r["name"] for r in rounds_project.read(project)["rounds"]}
    k = len(names) + 1
    while f"phone-{k}" in names:
        k += 1
    return f"phone-{k}"


def inbox_round(project: Path, name: str | None) -> str:
    """The project's inbox as a new pending round (`graft rounds add PROJECT NAME --inbox`); its name."""
    from graft.rounds import add_from_inbox

    return add_from_inbox(project, name or default_round_name(project))["round"]
