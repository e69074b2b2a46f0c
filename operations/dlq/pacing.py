"""At most N messages a second: each publish waits for its slot, 1/N s after the last one."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


class Pacer:
    """Spaces calls of `wait()` at least `1 / rate` seconds apart; no limit when rate is None.

    Slots are kept on a schedule rather than measured from the previous call, so time
    spent publishing counts towards the gap, and a slow publish is not followed by a
    burst: a late slot moves the schedule to now.
    """

    def __init__(
        self,
        rate: float | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if rate is not None and rate <= 0:
            raise ValueError("rate must be positive")
        self._interval = 1 / rate if rate else 0.0
        self._clock = clock
        self._sleep = sleep
        self._next: float | None = None

    async def wait(self) -> None:
        if not self._interval:
            return
        now = self._clock()
        if self._next is not None and self._next > now:
            await self._sleep(self._next - now)
            now = self._clock()
        slot = now if self._next is None else max(self._next, now)
        self._next = slot + self._interval
