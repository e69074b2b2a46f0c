"""The claimer's loop: it keeps firing through failures and sleeps until the next due time."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta

from saga import deadlines
from saga.orchestrator import Applied, CheckoutSaga


class FakeSaga(CheckoutSaga):
    """Rounds scripted by the test: an exception to raise, or how many deadlines fired."""

    def __init__(self, rounds: list[int | Exception], next_in: float | None) -> None:
        self.rounds = rounds
        self.calls = 0
        self.next_in = next_in
        self.done = asyncio.Event()

    async def fire_due(self, limit: int = 50) -> list[Applied]:
        self.calls += 1
        if not self.rounds:
            self.done.set()
            return []
        outcome = self.rounds.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return [None] * outcome  # type: ignore[list-item]

    async def next_due(self) -> datetime | None:
        if self.next_in is None:
            return None
        return datetime.now(UTC) + timedelta(seconds=self.next_in)


async def _run_until_done(saga: FakeSaga) -> None:
    task = asyncio.create_task(deadlines.run_deadlines(saga, poll=0.01))
    try:
        await asyncio.wait_for(saga.done.wait(), timeout=5)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_failed_round_is_followed_by_another() -> None:
    saga = FakeSaga([ConnectionError("database away"), ConnectionError("still away"), 1], 0.0)
    await _run_until_done(saga)
    assert saga.rounds == []  # past both failures, to the firing and beyond
    assert saga.calls >= 4


async def test_a_full_batch_is_followed_at_once_by_the_next() -> None:
    saga = FakeSaga([deadlines.BATCH, deadlines.BATCH, 3], None)
    await _run_until_done(saga)
    assert saga.rounds == []
    assert saga.calls >= 4


async def test_it_waits_until_the_next_deadline_but_never_longer_than_the_poll() -> None:
    saga = FakeSaga([], 30.0)
    assert await deadlines._until_next(saga, 1.0) == 1.0
    saga.next_in = 0.25
    assert 0.0 < await deadlines._until_next(saga, 1.0) <= 0.25
    saga.next_in = -5.0  # overdue
    assert await deadlines._until_next(saga, 1.0) == 0.0
    saga.next_in = None
    assert await deadlines._until_next(saga, 1.0) == 1.0
