"""Group commit (`infra.db.batching.Batcher`): what is submitted together runs together,
and a failed batch gives each item its own result or error."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from infra.db.batching import Batcher


class Recorder:
    """Doubles its items; fails a batch (or an item run alone) holding a poisoned one."""

    def __init__(self, poison: set[int] | None = None) -> None:
        self.poison = poison or set()
        self.batches: list[list[int]] = []
        self.alone: list[int] = []

    async def run_batch(self, items: Sequence[int]) -> list[int]:
        self.batches.append(list(items))
        await asyncio.sleep(0)  # a round trip: others may submit meanwhile
        if self.poison & set(items):
            raise ValueError("a poisoned item")
        return [item * 2 for item in items]

    async def run_one(self, item: int) -> int:
        self.alone.append(item)
        if item in self.poison:
            raise ValueError(f"poisoned {item}")
        return item * 2


def _batcher(recorder: Recorder, **kw: object) -> Batcher[int, int]:
    return Batcher("test", recorder.run_batch, recorder.run_one, **kw)  # type: ignore[arg-type]


async def test_one_item_alone_runs_at_once_by_itself() -> None:
    recorder = Recorder()
    assert await _batcher(recorder).submit(21) == 42
    assert (recorder.batches, recorder.alone) == ([], [21])


@pytest.mark.parametrize("hops", range(8))
async def test_one_submitted_as_the_last_batch_ends_runs_too(hops: int) -> None:
    # A second item arrives a few loop steps after the first one's run: for some number
    # of steps, just as the drainer has found the queue empty and is ending. It must
    # start a drainer of its own, not be left to (and cancelled with) the ending one.
    loop = asyncio.get_running_loop()
    recorder = Recorder()
    batcher = _batcher(recorder)
    second: list[asyncio.Task[int]] = []

    def later(steps: int) -> None:
        if steps:
            loop.call_soon(later, steps - 1)
        else:
            second.append(asyncio.create_task(batcher.submit(2)))

    async def first_run(item: int) -> int:
        if item == 1:
            loop.call_soon(later, hops)
        return await recorder.run_one(item)

    batcher._run_one = first_run
    assert await batcher.submit(1) == 2
    while not second:
        await asyncio.sleep(0)
    assert await second[0] == 4


async def test_without_run_one_an_item_alone_is_a_batch_of_one() -> None:
    recorder = Recorder(poison={3})
    batcher: Batcher[int, int] = Batcher("test", recorder.run_batch)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(5)), return_exceptions=True)
    assert results[:3] == [0, 2, 4]
    assert isinstance(results[3], ValueError)
    assert results[4] == 8
    # The failed batch, then each item again on its own.
    assert recorder.batches[0] == [0, 1, 2, 3, 4]
    assert sorted(recorder.batches[1:]) == [[0], [1], [2], [3], [4]]
    assert recorder.alone == []


async def test_items_submitted_together_run_as_one_batch() -> None:
    recorder = Recorder()
    batcher = _batcher(recorder)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(10)))
    assert results == [i * 2 for i in range(10)]
    assert recorder.batches == [list(range(10))]
    assert recorder.alone == []


async def test_items_arriving_while_a_batch_runs_go_in_the_next() -> None:
    recorder = Recorder()
    batcher = _batcher(recorder)
    first = asyncio.gather(*(batcher.submit(i) for i in range(3)))
    await asyncio.sleep(0)  # the first batch is on its way
    second = asyncio.gather(*(batcher.submit(i) for i in range(3, 6)))
    assert await first == [0, 2, 4]
    assert await second == [6, 8, 10]
    assert recorder.batches == [[0, 1, 2], [3, 4, 5]]


async def test_a_failed_batch_gives_each_item_its_own_result_or_error() -> None:
    recorder = Recorder(poison={3})
    batcher = _batcher(recorder)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(5)), return_exceptions=True)
    assert results[:3] == [0, 2, 4]
    assert isinstance(results[3], ValueError)
    assert str(results[3]) == "poisoned 3"
    assert results[4] == 8
    assert sorted(recorder.alone) == [0, 1, 2, 3, 4]


async def test_items_with_one_key_never_share_a_batch() -> None:
    recorder = Recorder()
    batcher = _batcher(recorder, key=lambda item: item % 3)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(6)))
    assert results == [i * 2 for i in range(6)]
    assert recorder.batches == [[0, 1, 2], [3, 4, 5]]


async def test_a_batch_takes_at_most_max_batch_items() -> None:
    recorder = Recorder()
    batcher = _batcher(recorder, max_batch=4)
    await asyncio.gather(*(batcher.submit(i) for i in range(10)))
    assert recorder.batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


async def test_a_cancelled_submitter_leaves_the_others_their_results() -> None:
    recorder = Recorder()
    batcher = _batcher(recorder)
    tasks = [asyncio.create_task(batcher.submit(i)) for i in range(4)]
    await asyncio.sleep(0)
    tasks[1].cancel()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(done[1], asyncio.CancelledError)
    assert [done[0], done[2], done[3]] == [0, 4, 6]


async def test_a_stopped_batcher_fails_what_waits_instead_of_hanging() -> None:
    async def never(items: Sequence[int]) -> list[int]:
        await asyncio.Event().wait()  # a statement that never comes back
        raise AssertionError

    batcher: Batcher[int, int] = Batcher("test", never, never)  # type: ignore[arg-type]
    waiting = [asyncio.create_task(batcher.submit(i)) for i in range(3)]
    await asyncio.sleep(0)  # the submitters run, and start the drainer
    drainer = batcher._drainer
    assert drainer is not None
    drainer.cancel()
    for task in waiting:
        with pytest.raises(asyncio.CancelledError):
            await task
    # And the next submission starts afresh.
    recorder = Recorder()
    batcher._run_batch, batcher._run_one = recorder.run_batch, recorder.run_one
    assert await batcher.submit(5) == 10
