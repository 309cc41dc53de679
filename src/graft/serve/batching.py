"""Dynamic micro-batching: concurrent requests share one forward pass.

One worker task takes the first waiting input, then gathers more until it has `max_batch` of them or
`max_delay` has passed since that first one arrived, whichever comes first, and runs the engine on them in a
thread so the event loop keeps accepting requests meanwhile. It waits for company only while some is known to
be coming (requests holding an `incoming` ticket: uploading or decoding for this model): a lone request runs
at once, so batching costs nothing at concurrency 1. Under load the queue is rarely empty and batches fill
without waiting. `max_batch=1` is batching off: one forward pass per request, in arrival order. How many
requests may wait is bounded before they get here (see `limits`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

log = logging.getLogger("graft.serve")


@dataclass
class BatchResult:
    """One request's logits row (1, classes), with what its batch was like."""

    logits: torch.Tensor
    batch_size: int
    queued_s: float
    inference_s: float


@dataclass
class _Item:
    inputs: torch.Tensor
    future: asyncio.Future[BatchResult]
    arrived: float


_STOP = object()


class _Ticket:
    """One announced request; `arrive` (at submit, or when it fails first) takes it off the expected count."""

    def __init__(self, batcher: Batcher) -> None:
        self.batcher, self.arrived = batcher, False

    def arrive(self) -> None:
        if not self.arrived:
            self.arrived = True
            self.batcher._incoming -= 1


class Batcher:
    """Groups `submit`ted (1, C, H, W) inputs into batches for `run`; one per loaded model."""

    def __init__(self, run: Callable[[torch.Tensor], torch.Tensor], *, max_batch: int, max_delay_s: float) -> None:
        self.run = run
        self.max_batch = max(1, int(max_batch))
        self.max_delay_s = max(0.0, float(max_delay_s))
        self._queue: asyncio.Queue[_Item | object] = asyncio.Queue()
        self._worker: asyncio.Task | None = None
        self._closed = False
        self._incoming = 0  # requests on their way here: uploading or decoding

    @contextlib.contextmanager
    def incoming(self) -> Iterator[_Ticket]:
        """Announce a request that will `submit` soon (held until it does, or fails): worth waiting for."""
        ticket = _Ticket(self)
        self._incoming += 1
        try:
            yield ticket
        finally:
            ticket.arrive()

    async def submit(self, inputs: torch.Tensor, ticket: _Ticket | None = None) -> BatchResult:
        """Queue one input and wait for its logits; the worker starts on first use, on the running loop."""
        if ticket is not None:
            ticket.arrive()
        if self._closed:
            raise RuntimeError("this batcher is closed")
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._work(), name="graft-batcher")
        item = _Item(inputs, asyncio.get_running_loop().create_future(), time.perf_counter())
        self._queue.put_nowait(item)
        return await item.future

    async def close(self) -> None:
        """Finish everything already queued, then stop the worker."""
        if self._closed:
            return
        self._closed = True
        if self._worker is not None:
            self._queue.put_nowait(_STOP)
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker

    async def _work(self) -> None:
        while True:
            first = await self._queue.get()
            if first is _STOP:
                return
            assert isinstance(first, _Item)
            items, stop = await self._gather(first)
            await self._run_batch(items)
            if stop:
                return

    async def _gather(self, first: _Item) -> tuple[list[_Item], bool]:
        """`first` plus whatever else arrives before the batch is full or `first` has waited `max_delay`."""
        items, deadline = [first], first.arrived + self.max_delay_s
        while len(items) < self.max_batch:
            remaining = deadline - time.perf_counter()
            try:
                if remaining <= 0 or not self._incoming:  # too late to wait, or nobody known to be coming
                    item = self._queue.get_nowait()
                else:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
            except (asyncio.QueueEmpty, TimeoutError):
                break
            if item is _STOP:
                return items, True
            assert isinstance(item, _Item)
            items.append(item)
        return items, False

    async def _run_batch(self, items: list[_Item]) -> None:
        live = [item for item in items if not item.future.done()]  # requests that timed out are skipped
        if not live:
            return
        started = time.perf_counter()
        try:
            logits = await asyncio.to_thread(self.run, torch.cat([item.inputs for item in live]))
        except Exception as error:  # the engine failed: every request in the batch gets the error
            log.exception("inference failed for a batch of %d", len(live))
            for item in live:
                if not item.future.done():
                    item.future.set_exception(error)
            return
        took = time.perf_counter() - started
        for row, item in enumerate(live):
            if not item.future.done():
                item.future.set_result(BatchResult(logits[row : row + 1], len(live), started - item.arrived, took))
