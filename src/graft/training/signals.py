"""Ctrl-C and SIGTERM become 'stop after this step': the loop then writes a checkpoint and leaves cleanly.

The first signal is acknowledged on stderr at once, so a user never wonders whether the key press was seen;
training steps and validation batches both check for it. A second Ctrl-C stops at once (the previous checkpoint
stays valid, as after a SIGKILL).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator


class StopSignals:
    def __init__(self) -> None:
        self.requested: int | None = None  # the signal that asked to stop

    def _handle(self, signum: int, _frame: object) -> None:
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.requested is None:
            name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
            # os.write, not print: a signal handler may run in the middle of another write to the same stream.
            note = f"\ngraft: {name}: stopping after the current step or batch; Ctrl-C again stops at once\n"
            os.write(2, note.encode())
        self.requested = signum

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopSignals]:
        """Handlers for the duration of training; only the main thread may install them (else: a no-op)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
