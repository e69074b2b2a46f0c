"""The HTTP load generator: orders up front, then checkouts open loop or closed loop.

Orders are made with POST /orders (`create_orders`) or, much faster, with COPY into the
run's database (`copy_orders`: the same rows the API writes for a new order).

Two clients, the same interface:

- aiohttp, when it is installed: one session, a connection pool of `concurrency`. It costs
  about a quarter of httpx's CPU per call (shared/LIMITS.md), CPU the system under test
  would otherwise lose on this 2-core machine.
- httpx otherwise: several `AsyncClient`s with at most `PER_HTTPX_CLIENT` requests in
  flight on each, since one client collapses under many concurrent requests
  (encode/httpx#3215).

The open loop sends at fixed intervals whatever the answers (a request that has to wait
for a free connection keeps its planned send time, so a slow API shows as latency rather
than as a lower offered rate); it can be told to stop early when the system falls too far
behind. The closed loop keeps `concurrency` requests going back to back, and holds at
most `max_in_flight` checkouts sent but not yet finished, so that it measures what the
whole pipeline sustains, not how fast the API can queue work.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from bench import db

PER_HTTPX_CLIENT = 8
TIMEOUT = 30.0


class Client(Protocol):
    kind: str

    async def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]: ...

    async def aclose(self) -> None: ...


class HttpxClient:
    kind = "httpx"

    def __init__(self, base_url: str, concurrency: int, headers: dict[str, str]) -> None:
        count = max(1, -(-concurrency // PER_HTTPX_CLIENT))
        per = max(1, min(PER_HTTPX_CLIENT, concurrency))
        limits = httpx.Limits(max_connections=per, max_keepalive_connections=per)
        self._clients = [
            httpx.AsyncClient(base_url=base_url, limits=limits, timeout=TIMEOUT, headers=headers)
            for _ in range(count)
        ]
        self._gates = [asyncio.Semaphore(per) for _ in range(count)]
        self._busy = [0] * count

    async def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        # The least busy client (requests waiting for it included).
        i = min(range(len(self._clients)), key=self._busy.__getitem__)
        self._busy[i] += 1
        try:
            async with self._gates[i]:
                response = await self._clients[i].request(method, path, json=body, headers=headers)
                return response.status_code, response.content
        finally:
            self._busy[i] -= 1

    async def aclose(self) -> None:
        for client in self._clients:
            await client.aclose()


class AiohttpClient:
    kind = "aiohttp"

    def __init__(self, base_url: str, concurrency: int, headers: dict[str, str]) -> None:
        import aiohttp

        self._session = aiohttp.ClientSession(
            base_url=base_url,
            headers=headers,
            connector=aiohttp.TCPConnector(limit=concurrency),
            timeout=aiohttp.ClientTimeout(total=TIMEOUT),
        )

    async def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers = {**(headers or {}), "content-type": "application/json"}
        async with self._session.request(method, path, data=data, headers=headers) as response:
            return response.status, await response.read()

    async def aclose(self) -> None:
        await self._session.close()


def aiohttp_available() -> bool:
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        return False
    return True


def make_client(
    base_url: str, concurrency: int, kind: str = "auto", headers: dict[str, str] | None = None
) -> Client:
    """`kind`: "aiohttp", "httpx", or "auto" (aiohttp if installed); `headers` go with
    every request (the API key)."""
    if kind == "auto":
        kind = "aiohttp" if aiohttp_available() else "httpx"
    if kind == "aiohttp":
        return AiohttpClient(base_url, concurrency, headers or {})
    return HttpxClient(base_url, concurrency, headers or {})


# --------------------------------------------------------------------------- orders


def order_body(i: int, amount: str) -> dict[str, Any]:
    return {
        "order_name": f"Benchmark poster {i}",
        "amount": amount,
        "currency": "USD",
        "customer": {"email": f"bench{i}@example.com", "name": f"Bench Customer {i}"},
    }


async def create_orders(
    client: Client, amounts: list[str], concurrency: int, start_index: int = 0
) -> list[tuple[str, str]]:
    """POST /orders once per amount; (order_id, amount) of each, in the given order."""
    results: list[tuple[str, str] | None] = [None] * len(amounts)
    indexes = iter(range(len(amounts)))

    async def worker() -> None:
        for i in indexes:
            status, content = await client.request(
                "POST", "/orders", order_body(start_index + i, amounts[i])
            )
            if status != 201:
                raise RuntimeError(f"POST /orders answered {status}: {content[:300]!r}")
            results[i] = (json.loads(content)["order_id"], amounts[i])

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return [r for r in results if r is not None]


async def copy_orders(
    conninfo: str, amounts: list[str], start_index: int = 0
) -> list[tuple[str, str]]:
    """The same orders as POST /orders makes (PENDING, now), with COPY: seconds, not minutes."""
    made = [(str(uuid.uuid4()), amount) for amount in amounts]
    async with (
        await db.connect(conninfo) as conn,
        conn.cursor() as cursor,
        cursor.copy(
            "COPY orders (order_id, order_name, amount, currency, customer_email, "
            "customer_name, status, created_at, updated_at) FROM STDIN"
        ) as copy,
    ):
        for i, (order_id, amount) in enumerate(made, start_index):
            body = order_body(i, amount)
            await copy.write_row(
                (
                    order_id,
                    body["order_name"],
                    amount,
                    body["currency"],
                    body["customer"]["email"],
                    body["customer"]["name"],
                    "PENDING",
                    "now",
                    "now",
                )
            )
    return made


class OrderPool:
    """Orders not yet checked out; `take()` gives the next one, None when none is left."""

    def __init__(self, orders: list[tuple[str, str]]) -> None:
        self._orders = deque(orders)

    def take(self) -> tuple[str, str] | None:
        return self._orders.popleft() if self._orders else None

    def __len__(self) -> int:
        return len(self._orders)


# --------------------------------------------------------------------------- checkouts


@dataclass(slots=True)
class Checkout:
    """One POST /orders/{id}/checkout and what it answered. Times are wall clock (s)."""

    phase: str
    order_id: str
    amount: str
    sent: float
    answered: float | None = None
    status: int | None = None
    checkout_id: str | None = None
    error: str | None = None

    @property
    def accepted(self) -> bool:
        return self.status == 202 and self.checkout_id is not None


@dataclass
class LoadState:
    """Counts shared by the phases: the caps are on all unfinished checkouts."""

    sent: int = 0
    accepted: int = 0
    refused: int = 0  # answered otherwise than 202, or not at all
    orders_created_during_load: int = 0
    last_send: float = 0.0  # time.time() of the latest send

    def outstanding(self, done: int) -> int:
        """Checkouts sent and not refused (answered or not yet) that are not finished."""
        return self.sent - self.refused - done


async def post_checkout(client: Client, record: Checkout, state: LoadState) -> Checkout:
    state.sent += 1
    state.last_send = time.time()
    try:
        status, content = await client.request(
            "POST",
            f"/orders/{record.order_id}/checkout",
            headers={"Idempotency-Key": f"bench-{record.order_id}"},
        )
        record.answered = time.time()
        record.status = status
        if status == 202:
            record.checkout_id = json.loads(content)["checkout_id"]
            state.accepted += 1
        else:
            state.refused += 1
            record.error = content[:200].decode(errors="replace")
    except Exception as exc:  # a timeout or a refused connection: counted, not fatal
        state.refused += 1
        record.answered = time.time()
        record.error = repr(exc)[:200]
    return record


async def open_loop(
    client: Client,
    pool: OrderPool,
    rate: float,
    seconds: float,
    state: LoadState,
    phase: str = "offered",
    overloaded: Callable[[], bool] | None = None,
) -> list[Checkout]:
    """Send a checkout every 1/rate s for `seconds`, whatever the answers.

    `overloaded`, asked before each send, stops the phase early when it says so: an open
    loop faster than the system only builds a backlog that the rest of the run would
    spend its time working off.
    """
    count = int(rate * seconds)
    records: list[Checkout] = []
    tasks: list[asyncio.Task[Checkout]] = []
    start_mono = time.monotonic() + 0.01
    start_wall = time.time() + (start_mono - time.monotonic())
    for i in range(count):
        due = i / rate
        delay = start_mono + due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        order = pool.take()
        if order is None or (overloaded is not None and overloaded()):
            break
        record = Checkout(phase, order[0], order[1], sent=start_wall + due)
        records.append(record)
        tasks.append(asyncio.create_task(post_checkout(client, record, state)))
    await asyncio.gather(*tasks)
    return records


async def closed_loop(
    client: Client,
    pool: OrderPool,
    concurrency: int,
    seconds: float,
    state: LoadState,
    in_flight: Callable[[], int],
    max_in_flight: int,
    amount: str,
    phase: str = "full_speed",
) -> list[Checkout]:
    """`concurrency` senders back to back for `seconds`, capped at `max_in_flight` unfinished.

    When the orders made up front run out, a sender creates one first (counted in
    `state.orders_created_during_load`; that API call then also loads the machine).
    """
    records: list[Checkout] = []
    end = time.monotonic() + seconds

    async def sender(n: int) -> None:
        serial = itertools.count()
        while time.monotonic() < end:
            if max_in_flight and in_flight() >= max_in_flight:
                await asyncio.sleep(0.05)
                continue
            order = pool.take()
            if order is None:
                index = 10_000_000 + n * 1_000_000 + next(serial)
                made = await create_orders(client, [amount], 1, start_index=index)
                state.orders_created_during_load += 1
                order = made[0]
            record = Checkout(phase, order[0], order[1], sent=time.time())
            records.append(record)
            await post_checkout(client, record, state)

    await asyncio.gather(*(sender(n) for n in range(concurrency)))
    return records
