"""Group commit: statements submitted at about the same moment run as one.

Under load a consumer has many messages in hand at once (its prefetch), each about to
send PostgreSQL the same kind of statement. A `Batcher` runs the first one at once and
gathers what is submitted while it is on its way to the database; those then go
together, as one batch: one round trip and, in autocommit, one transaction (one WAL
flush) for all of them. With one message in hand nothing waits for company, and the
busier the process, the larger the batches, like the relay's.

A batch that fails as a whole (the row of one item violating a constraint, say, or the
connection lost) is run again item by item (by default as batches of one), so that
each item gets its own result or its own error, exactly as if it had never been
batched. Items with the same `key` (two deliveries of one message) never share a
batch: the later one waits for the next.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Generic, TypeVar

import structlog

log = structlog.get_logger()

T = TypeVar("T")
R = TypeVar("R")

# The most items one batch takes: it bounds a statement's size (and its parameters:
# PostgreSQL takes at most 65,535 per statement).
MAX_BATCH = 50


class Batcher(Generic[T, R]):
    """Runs submitted items in batches, one batch in flight at a time."""

    def __init__(
        self,
        name: str,
        run_batch: Callable[[Sequence[T]], Awaitable[Sequence[R]]],
        run_one: Callable[[T], Awaitable[R]] | None = None,
        *,
        key: Callable[[T], Hashable] | None = None,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self.name = name
        self._run_batch = run_batch
        self._run_one = run_one or self._batch_of_one
        self._key = key
        self._max_batch = max_batch
        self._queue: deque[tuple[T, asyncio.Future[R]]] = deque()
        self._drainer: asyncio.Task[None] | None = None
        self._in_flight: list[tuple[T, asyncio.Future[R]]] = []

    async def _batch_of_one(self, item: T) -> R:
        """How an item runs alone unless the owner says otherwise: a batch of one."""
        return (await self._run_batch([item]))[0]

    async def submit(self, item: T) -> R:
        """Run `item` (in a batch if others are waiting); its result, or its error."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._drainer is None:
            self._drainer = asyncio.create_task(self._drain(), name=f"batcher {self.name}")
            self._drainer.add_done_callback(self._drained)
        return await future

    async def _drain(self) -> None:
        try:
            while self._queue:
                self._in_flight = self._take()
                await self._run(self._in_flight)
                self._in_flight = []
        except BaseException as exc:
            # Cancelled (shutdown) or a bug here: no submitter may wait on.
            self._fail_waiting(exc)
            raise
        finally:
            # At once, not in a done callback: one submitted after the loop saw the
            # queue empty must start a drainer of its own, not wait on this one.
            self._drainer = None

    def _drained(self, task: asyncio.Task[None]) -> None:
        """A drainer cancelled before it ever ran never reached its own `finally`."""
        if self._drainer is task:
            self._drainer = None
            self._fail_waiting(asyncio.CancelledError())

    def _fail_waiting(self, exc: BaseException) -> None:
        for _, future in [*self._in_flight, *self._queue]:
            if not future.done():
                if isinstance(exc, Exception):
                    future.set_exception(exc)
                else:
                    future.cancel()
        self._in_flight = []
        self._queue.clear()

    def _take(self) -> list[tuple[T, asyncio.Future[R]]]:
        """The next batch: waiting items in order, each key once, at most `max_batch`."""
        batch: list[tuple[T, asyncio.Future[R]]] = []
        later: list[tuple[T, asyncio.Future[R]]] = []
        keys: set[Hashable] = set()
        while self._queue and len(batch) < self._max_batch:
            entry = self._queue.popleft()
            if entry[1].done():  # its submitter was cancelled
                continue
            if self._key is not None:
                key = self._key(entry[0])
                if key in keys:
                    later.append(entry)
                    continue
                keys.add(key)
            batch.append(entry)
        self._queue.extendleft(reversed(later))
        return batch

    async def _run(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        if not batch:
            return
        if len(batch) > 1:
            try:
                results = await self._run_batch([item for item, _ in batch])
            except Exception as exc:
                log.warning(
                    "a batch failed; running its items one by one",
                    batcher=self.name,
                    items=len(batch),
                    error=repr(exc),
                )
            else:
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
                return
        await asyncio.gather(*(self._run_alone(item, future) for item, future in batch))

    async def _run_alone(self, item: T, future: asyncio.Future[R]) -> None:
        try:
            result = await self._run_one(item)
        except Exception as exc:
            if not future.done():
                future.set_exception(exc)
        else:
            if not future.done():
                future.set_result(result)
