"""The outbox relay: publishes committed outbox rows to RabbitMQ, then deletes them.

How rows are claimed, in what order, and what a crash does:

- A batch is claimed with ``SELECT ... ORDER BY id LIMIT n FOR UPDATE SKIP LOCKED``
  inside one transaction. Several relays can run side by side: each skips the rows
  another holds, so no row is published by two relays at once.
- Every row of the batch is published with ``mandatory`` and publisher confirms, all
  in flight together, and the relay waits for every confirm. Only then are the rows
  deleted, in the same transaction that locked them, and the transaction commits.
- A crash (or a failed publish) between publishing and committing rolls the
  transaction back: the rows stay and are published again. That is the duplicate
  at-least-once delivery allows; each copy has the same ``message_id``, and every
  consumer de-duplicates by it in its inbox. Nothing is ever lost, because a row is
  deleted only after the broker confirmed it.
- Order: within a batch rows are published in id order, but ids are assigned at
  insert, not at commit, so a slow transaction can commit a lower id after a higher
  one was published. The relay never keeps a "published up to id N" mark, so such a
  row is simply picked up by the next batch rather than skipped. No consumer relies on
  a global order: within one checkout each message is written only after the
  previous one was consumed (the saga is causal), and across checkouts order does
  not matter.
- Wake-up: an insert into the outbox fires ``NOTIFY outbox`` (a trigger); the relay
  LISTENs on a separate connection and also polls every ``relay_poll_interval``
  seconds, so a missed notification only delays a row, never strands it.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from datetime import UTC, datetime
from typing import Any

import psycopg
import structlog
import uvloop
from opentelemetry.trace import SpanKind
from psycopg.rows import dict_row

from infra import metrics
from infra.db.migrate import libpq_url
from infra.health import serving_health
from infra.logging import configure_logging
from infra.messaging.publisher import Outgoing, Publisher
from infra.messaging.topology import Topology, declare_topology
from infra.settings import Settings
from infra.timeline.record import record_published
from infra.tracing import configure_tracing, extract, inject, tracer

log = structlog.get_logger()

CLAIM = """
    SELECT id, message_id, exchange, routing_key, message_type, correlation_id,
           headers, body, created_at
    FROM outbox ORDER BY id LIMIT %(limit)s FOR UPDATE SKIP LOCKED
"""
DELETE = "DELETE FROM outbox WHERE id = ANY(%(ids)s)"


class OutboxRelay:
    """Moves outbox rows to the broker in batches; see the module docstring for guarantees."""

    def __init__(
        self,
        database_url: str,
        publisher: Publisher,
        topology: Topology,
        *,
        batch_size: int = 200,
        poll_interval: float = 1.0,
    ) -> None:
        self._database_url = database_url
        self._publisher = publisher
        self._topology = topology
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._conn: psycopg.AsyncConnection[dict[str, Any]] | None = None

    async def _connection(self) -> psycopg.AsyncConnection[dict[str, Any]]:
        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(
                self._database_url, row_factory=dict_row
            )
        return self._conn

    async def publish_batch(self) -> int:
        """Claim, publish and delete one batch; return how many rows it moved."""
        conn = await self._connection()
        async with conn.transaction():
            rows = await (await conn.execute(CLAIM, {"limit": self._batch_size})).fetchall()
            if not rows:
                return 0
            await asyncio.gather(*(self._publish(r) for r in rows))
            await record_published(conn, rows)  # the timeline's "published, lag N ms"
            await conn.execute(DELETE, {"ids": [r["id"] for r in rows]})
        now = datetime.now(UTC)
        for row in rows:
            metrics.MESSAGES_PUBLISHED.labels(row["exchange"], row["routing_key"]).inc()
            metrics.RELAY_LAG.observe((now - row["created_at"]).total_seconds())
        log.debug("outbox batch published", rows=len(rows))
        return len(rows)

    async def _publish(self, row: dict[str, Any]) -> None:
        # A span per row, child of the context the row was written in, so the
        # relay's hop (and its lag) appears in the checkout's trace.
        headers = dict(row["headers"])
        with tracer().start_as_current_span(
            f"outbox publish {row['routing_key']}",
            context=extract(headers),
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.message.id": str(row["message_id"]),
                "messaging.destination.name": row["exchange"],
            },
        ):
            inject(headers)
            await self._publisher.publish(self._outgoing(row, headers))

    def _outgoing(self, row: dict[str, Any], headers: dict[str, Any]) -> Outgoing:
        return Outgoing(
            exchange=self._topology.exchange_name(row["exchange"]),
            routing_key=row["routing_key"],
            body=row["body"].encode(),
            message_id=row["message_id"],
            correlation_id=row["correlation_id"],
            message_type=row["message_type"],
            headers=headers,
            timestamp=row["created_at"],
        )

    async def drain(self) -> int:
        """Publish until the outbox is empty; return the number of rows moved."""
        total = 0
        while moved := await self.publish_batch():
            total += moved
        return total

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until `stop` is set, reconnecting with backoff after any failure."""
        backoff = 0.5
        while not stop.is_set():
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._database_url, autocommit=True
                ) as listener:
                    await listener.execute("LISTEN outbox")
                    log.info("relay listening for outbox rows")
                    backoff = 0.5
                    await self._loop(listener, stop)
            except (psycopg.Error, OSError, ConnectionError) as exc:
                log.warning("relay lost a connection; retrying", error=repr(exc), in_s=backoff)
                await self.close()
            except Exception as exc:  # a publish failure: rows stay, retried after backoff
                log.warning("relay could not publish; retrying", error=repr(exc), in_s=backoff)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), backoff)
            backoff = min(backoff * 2, 30.0)
        await self.close()

    async def _loop(self, listener: psycopg.AsyncConnection[Any], stop: asyncio.Event) -> None:
        while not stop.is_set():
            moved = await self.publish_batch()
            if moved == self._batch_size:
                continue  # more are probably waiting
            await self._wait_for_work(listener, stop)

    async def _wait_for_work(
        self, listener: psycopg.AsyncConnection[Any], stop: asyncio.Event
    ) -> None:
        """Sleep until a NOTIFY, the poll interval, or a stop, whichever comes first."""

        async def notified() -> None:
            async for _ in listener.notifies(timeout=self._poll_interval, stop_after=1):
                pass

        waiters = {asyncio.ensure_future(notified()), asyncio.ensure_future(stop.wait())}
        done, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for task in done:
            task.result()  # a lost listener connection surfaces here

    async def close(self) -> None:
        """Close the claiming connection (`run` does this itself when it stops)."""
        if self._conn is not None and not self._conn.closed:
            await self._conn.close()
        self._conn = None


SAMPLE_OUTBOX = """
    SELECT count(*) AS pending,
           coalesce(extract(epoch FROM now() - min(created_at)), 0) AS oldest
    FROM outbox
"""
# Served by the partial unique index on active checkouts: cheap at any table size.
SAMPLE_ACTIVE = """
    SELECT state, count(*) AS n FROM checkouts
    WHERE state IN ('STARTED', 'PAYMENT_PENDING') GROUP BY state
"""


async def sample_gauges(
    database_url: str,
    publisher: Publisher,
    topology: Topology,
    stop: asyncio.Event,
    interval: float = 5.0,
) -> None:
    """Every `interval` s: outbox backlog, active checkouts by state, dead-letter depths."""
    while not stop.is_set():
        try:
            async with await psycopg.AsyncConnection.connect(
                database_url, autocommit=True, row_factory=dict_row
            ) as conn:
                while not stop.is_set():
                    outbox = await (await conn.execute(SAMPLE_OUTBOX)).fetchone()
                    assert outbox is not None
                    metrics.OUTBOX_PENDING.set(outbox["pending"])
                    metrics.OUTBOX_OLDEST_AGE.set(float(outbox["oldest"]))
                    active = {
                        r["state"]: r["n"]
                        for r in await (await conn.execute(SAMPLE_ACTIVE)).fetchall()
                    }
                    for state in ("STARTED", "PAYMENT_PENDING"):
                        metrics.ACTIVE_CHECKOUTS.labels(state).set(active.get(state, 0))
                    for queue in topology.queues.values():
                        declared = await publisher.channel.declare_queue(queue.dlq, passive=True)
                        depth = declared.declaration_result.message_count or 0
                        metrics.DLQ_DEPTH.labels(queue.name).set(depth)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), interval)
        except Exception as exc:  # metrics must never stop the relay
            log.warning("could not sample gauges", error=repr(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """Declare the topology, then relay until `stop` is set."""
    topology = Topology.from_settings(settings)
    database_url = libpq_url(settings.database_url.get_secret_value())
    publisher = await Publisher.connect(
        settings.rabbit_url.get_secret_value(), name=f"{settings.namespace}.relay"
    )
    try:
        await declare_topology(publisher.channel, topology)
        relay = OutboxRelay(
            database_url,
            publisher,
            topology,
            batch_size=settings.relay_batch_size,
            poll_interval=settings.relay_poll_interval,
        )

        async def broker_ok() -> bool:
            return publisher.is_connected

        async def database_ok() -> bool:
            async with await psycopg.AsyncConnection.connect(database_url) as conn:
                await conn.execute("SELECT 1")
            return True

        checks = {"broker": broker_ok, "database": database_ok}
        async with serving_health(settings, "relay", checks):
            sampler = asyncio.create_task(sample_gauges(database_url, publisher, topology, stop))
            await relay.run(stop)
            await sampler
    finally:
        await publisher.close()


def run(settings: Settings) -> None:
    """`checkout relay`: run until SIGINT or SIGTERM; the batch in hand is finished first."""
    configure_logging(settings, "relay")
    configure_tracing(settings, "relay")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(settings, stop)
        log.info("relay stopped")

    # uvloop: a faster event loop (LIMITS.md: +75% for uvicorn; the relay is I/O-bound too).
    uvloop.run(main())
