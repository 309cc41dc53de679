"""The micro-batcher on its own: batches up to max_batch, waits only for requests known to be coming, keeps every
request's own row, and hands an engine failure to every request of the batch."""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch

from graft.serve.batching import Batcher


def _recording():
    """An engine returning each row's input sum as its logit, and recording batch sizes."""

    def run(batch: torch.Tensor) -> torch.Tensor:
        run.sizes.append(len(batch))
        return batch.flatten(1).sum(1, keepdim=True)

    run.sizes = []
    return run


def _input(value: float) -> torch.Tensor:
    return torch.full((1, 1, 2, 2), value)


def test_concurrent_inputs_share_batches_and_keep_their_rows():
    run = _recording()

    async def go():
        batcher = Batcher(run, max_batch=4, max_delay_s=10.0)
        with batcher.incoming(), batcher.incoming():  # two more announced: the first waits for them
            first = asyncio.create_task(batcher.submit(_input(0)))
            await asyncio.sleep(0.01)
            others = [asyncio.create_task(batcher.submit(_input(v))) for v in range(1, 10)]
        results = await asyncio.gather(first, *others)
        await batcher.close()
        return results

    results = asyncio.run(go())
    assert [float(r.logits) for r in results] == [4.0 * v for v in range(10)]
    assert run.sizes[0] == 4 and max(run.sizes) == 4 and sum(run.sizes) == 10
    assert results[0].batch_size == 4 and all(r.inference_s >= 0 and r.queued_s >= 0 for r in results)


def test_max_batch_one_is_batching_off():
    run = _recording()

    async def go():
        batcher = Batcher(run, max_batch=1, max_delay_s=10.0)
        results = await asyncio.gather(*(batcher.submit(_input(v)) for v in range(5)))
        await batcher.close()
        return results

    results = asyncio.run(go())
    assert run.sizes == [1] * 5 and [r.batch_size for r in results] == [1] * 5


def test_a_lone_request_does_not_wait_for_the_delay():
    run = _recording()

    async def go():
        batcher = Batcher(run, max_batch=16, max_delay_s=60.0)
        result = await asyncio.wait_for(batcher.submit(_input(1)), timeout=20)  # not the 60 s delay
        await batcher.close()
        return result

    assert asyncio.run(go()).batch_size == 1


def test_an_announced_request_is_waited_for():
    run = _recording()

    async def go():
        batcher = Batcher(run, max_batch=16, max_delay_s=60.0)
        with batcher.incoming() as ticket:
            first = asyncio.create_task(batcher.submit(_input(1)))
            await asyncio.sleep(0.05)  # still decoding, say
            second = await batcher.submit(_input(2), ticket)
        results = [await first, second]
        await batcher.close()
        return results

    first, second = asyncio.run(go())
    assert first.batch_size == second.batch_size == 2 and run.sizes == [2]


def test_engine_failure_reaches_every_request_of_the_batch():
    def broken(batch: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("engine on fire")

    async def go():
        batcher = Batcher(broken, max_batch=4, max_delay_s=0.05)
        with batcher.incoming(), batcher.incoming(), batcher.incoming():
            tasks = [asyncio.create_task(batcher.submit(_input(v))) for v in range(3)]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await batcher.close()
        return results

    results = asyncio.run(go())
    assert all(isinstance(r, RuntimeError) and "on fire" in str(r) for r in results)


def test_cancelled_requests_are_skipped_and_close_finishes_the_queue():
    release = threading.Event()
    seen: list[float] = []

    def gated(batch: torch.Tensor) -> torch.Tensor:
        release.wait(30)
        seen.extend(batch.flatten(1).sum(1).tolist())
        return batch.flatten(1).sum(1, keepdim=True)

    async def go():
        batcher = Batcher(gated, max_batch=1, max_delay_s=0.0)
        busy = asyncio.create_task(batcher.submit(_input(1)))
        await asyncio.sleep(0.05)  # the worker is now held inside the engine
        gone = asyncio.create_task(batcher.submit(_input(7)))
        kept = [asyncio.create_task(batcher.submit(_input(v))) for v in (2, 3)]
        await asyncio.sleep(0)
        gone.cancel()  # as a request timing out while queued
        release.set()
        closing = asyncio.create_task(batcher.close())  # everything queued before close is still answered
        results = [await busy, *[await task for task in kept]]
        await closing
        with pytest.raises(RuntimeError, match="closed"):
            await batcher.submit(_input(1))
        return results

    results = asyncio.run(go())
    assert [float(r.logits) for r in results] == [4.0, 8.0, 12.0]
    assert seen == [4.0, 8.0, 12.0], "the cancelled request never reached the engine"
