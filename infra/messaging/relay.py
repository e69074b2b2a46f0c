"""The outbox relay: publishes committed outbox rows to RabbitMQ, then deletes them.

How rows are claimed, in what order, and what a crash does:

- A batch is claimed with ``SELECT ... ORDER BY id LIMIT n FOR UPDATE SKIP LOCKED``
  inside one transaction. Several relays can run side by side: each skips the rows
  another holds, so no row is published by two relays at once. Within a relay, up to
  ``OutboxRelay.LANES`` batches are in flight at a time, each in its own transaction
  on its own connection, and they share out the rows the same way.
- Every row of the batch is published with ``mandatory`` and publisher confirms, all
  in flight together (written before any confirm is awaited), and the relay waits for
  every confirm or failure. Only then are the confirmed rows deleted, with one
  statement, in the same transaction that locked them, and the transaction commits.
- A row the broker did not confirm (returned as unroutable, nacked, or its confirm
  lost with the connection) is not deleted: it stays locked until the commit, then is
  free again, and the relay raises the failure and retries after its backoff. The
  batch's confirmed rows are deleted all the same, so one bad row never makes the
  others be published again and again.
- A crash between publishing and committing rolls the transaction back: the rows stay
  and are published again. That is the duplicate at-least-once delivery allows; each
  copy has the same ``message_id``, and every consumer de-duplicates by it in its
  inbox. Nothing is ever lost, because a row is deleted only after the broker
  confirmed it.
- Order: within a batch rows are published in id order, and a relay writes its
  batches in the order it claimed them (the next is claimed only once the one before
  is written); but ids are assigned at insert, not at commit, so a slow transaction
  can commit a lower id after a higher one was published, and a row that failed is
  published again after later rows went out. The relay never keeps a "published up
  to id N" mark, so such a row is simply picked up by a later batch rather than
  skipped. No consumer relies on a global order: within one checkout each message is
  written only after the previous one was consumed (the saga is causal), so a
  checkout never has two rows waiting at once, and across checkouts order does not
  matter.
- Wake-up: an insert into the outbox fires ``NOTIFY outbox`` (a trigger); the relay
  LISTENs on a separate connection and also polls every ``relay_poll_interval``
  seconds, so a missed notification only delays a row, never strands it.
- The LISTEN connection goes to ``CHECKOUT_DATABASE_LISTEN_URL`` (default: the
  database URL): behind a pooler in transaction mode LISTEN is accepted and then
  nothing is ever delivered, so it needs a direct connection. Rows found by the poll
  alone (not one NOTIFY in ``NOTIFY_SILENCE_S`` while the poll keeps finding rows) are
  that symptom: the relay says so once, at warning level (`NotifyWatch`).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
import structlog
import uvloop
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, set_span_in_context
from psycopg.rows import dict_row

from infra import metrics
from infra.db.migrate import libpq_url
from infra.db.models import ACTIVE_CANCELLATION_STATES, ACTIVE_CHECKOUT_STATES
from infra.db.preparation import Preparation, choose_preparation, connect_kwargs
from infra.db.session import name_connections
from infra.health import serving_health
from infra.heap import freeze_startup
from infra.logging import configure_logging
from infra.messaging.publisher import Outgoing, Publisher, SentBatch
from infra.messaging.topology import Topology, declare_apart, dlq_depths
from infra.settings import Settings
from infra.timeline.record import OUTBOX_PUBLISHED
from infra.tracing import configure_tracing, extract, inject, tracer

log = structlog.get_logger()

NOTIFY_SILENCE_S = 30.0
"""How long the poll may find rows with no NOTIFY before the relay warns."""


class NotifyWatch:
    """Tells when NOTIFY seems lost: the poll keeps finding rows, no notification comes.

    A wake-up by the poll that finds rows means a row's NOTIFY did not arrive (one
    arriving while the relay was busy wakes the next wait at once). Once that has gone
    on for `silence_s` with no NOTIFY at all, `poll_found` returns True, once; a NOTIFY
    ends the spell (`notified` returns True if a warning had been given).
    """

    def __init__(self, silence_s: float = NOTIFY_SILENCE_S) -> None:
        self._silence_s = silence_s
        self._since: float | None = None  # first poll that found rows since a NOTIFY
        self._warned = False

    @property
    def silence_s(self) -> float:
        return self._silence_s

    def notified(self) -> bool:
        recovered = self._warned
        self._since, self._warned = None, False
        return recovered

    def poll_found(self, now: float) -> bool:
        if self._since is None:
            self._since = now
        if self._warned or now - self._since < self._silence_s:
            return False
        self._warned = True
        return True


CLAIM = """
    SELECT id, message_id, exchange, routing_key, message_type, correlation_id,
           headers, body, created_at
    FROM outbox ORDER BY id LIMIT %(limit)s FOR UPDATE SKIP LOCKED
"""
PUBLISHED = """
    WITH published AS (
        DELETE FROM outbox WHERE id = ANY(%(ids)s)
        RETURNING message_id, message_type, correlation_id, exchange, routing_key, created_at
    )
    INSERT INTO checkout_events
        (checkout_id, at, source, kind, message_id, message_type, duration_ms, detail)
    SELECT correlation_id, %(at)s, 'relay', %(kind)s, message_id, message_type,
           greatest(extract(epoch FROM %(at)s - created_at)::float8 * 1000, 0),
           CASE WHEN exchange <> '' AND routing_key <> '' THEN exchange || ' ' || routing_key END
    FROM published
"""
"""Delete the confirmed rows and write their timeline lines, in one statement.

The lines are those `infra.timeline.record.published_events` makes of the same rows
("published, lag N ms"; a test holds the two together), built by the database from the
rows it deletes: the relay sends one array of ids rather than an array per column of
the timeline, whose conversion was a tenth of the relay's CPU.
"""


def _observe(confirmed: Sequence[dict[str, Any]], confirmed_at: datetime) -> None:
    """The batch's metrics: one counter increment per destination, one lag per row."""
    destinations = Counter((row["exchange"], row["routing_key"]) for row in confirmed)
    for (exchange, routing_key), count in destinations.items():
        metrics.MESSAGES_PUBLISHED.labels(exchange, routing_key).inc(count)
    for row in confirmed:
        metrics.RELAY_LAG.observe((confirmed_at - row["created_at"]).total_seconds())


async def _rollback(conn: psycopg.AsyncConnection[Any]) -> None:
    """End the batch's transaction without deleting anything; on a broken connection
    (whose transaction the server has already dropped) there is nothing to end."""
    if not conn.closed:
        with contextlib.suppress(psycopg.Error):
            await conn.rollback()


def _end_failed(span: Span, failure: BaseException) -> None:
    """End a row's span as failed, as `start_as_current_span` would on an exception."""
    span.record_exception(failure)
    span.set_status(Status(StatusCode.ERROR, f"{type(failure).__name__}: {failure}"))
    span.end()


@dataclass
class _InFlight:
    """A claimed batch, written to the broker, its transaction still open."""

    conn: psycopg.AsyncConnection[dict[str, Any]]
    rows: list[dict[str, Any]]
    spans: list[Span]
    sent: SentBatch


class OutboxRelay:
    """Moves outbox rows to the broker in batches; see the module docstring for guarantees."""

    LANES = 2
    """Batches in flight at once, each on its own connection (see `_publish_backlog`)."""

    def __init__(
        self,
        database_url: str,
        publisher: Publisher,
        topology: Topology,
        *,
        batch_size: int = 200,
        poll_interval: float = 1.0,
        listen_url: str | None = None,
        prepare: Preparation = False,
        notify_silence_s: float = NOTIFY_SILENCE_S,
    ) -> None:
        self._database_url = database_url
        self._listen_url = listen_url or database_url
        # `CHECKOUT_DATABASE_PREPARE`; "auto" is decided per connection once it is open.
        self._prepare = prepare
        self._connect_kwargs = connect_kwargs(prepare)
        self._notify_watch = NotifyWatch(notify_silence_s)
        self._failing_since: float | None = None  # the first failure of an outage
        self._publisher = publisher
        self._topology = topology
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._conns: list[psycopg.AsyncConnection[dict[str, Any]] | None] = [None] * self.LANES
        # Looked up once: the SDK's `get_tracer` builds a new tracer on every call.
        self._tracer = tracer()

    async def _connection(self, lane: int) -> psycopg.AsyncConnection[dict[str, Any]]:
        conn = self._conns[lane]
        if conn is None or conn.closed:
            # In autocommit, with each batch's transaction opened by hand (`_claim_and_send`):
            # psycopg's own BEGIN waits for its answer before the next statement goes.
            conn = await psycopg.AsyncConnection.connect(
                self._database_url, row_factory=dict_row, autocommit=True, **self._connect_kwargs
            )
            try:
                await choose_preparation(conn, self._prepare)
            except BaseException:
                await conn.close()
                raise
            self._conns[lane] = conn
        return conn

    async def publish_batch(self) -> int:
        """Claim, publish and delete one batch; return how many rows it claimed.

        Costs a fixed number of statements and one publish round per batch, whatever
        its size: the claim, then one statement that deletes the confirmed rows and
        writes their timeline lines; every row's publish is written at once and their
        confirms are awaited together. Rows the broker did not confirm (returned as
        unroutable, nacked, or lost with the connection) are not deleted; the ones it
        did confirm are, in the same transaction, and then the first failure is raised
        so that `run` retries the rest after its backoff.
        """
        flight = await self._claim_and_send(0)
        return await self._settle(flight) if flight is not None else 0

    async def _publish_backlog(self, stop: asyncio.Event | None = None) -> int:
        """Publish batches back to back until one is not full; return the rows moved.

        Up to `LANES` batches are in flight at a time, each on its own connection:
        while the earlier ones wait for their confirms and then delete their rows, the
        next is claimed (SKIP LOCKED passes over the rows the others still hold) and
        written. So the database and broker round trips of some batches overlap the CPU
        work of another, and batches still go out in the order they were claimed. A
        lane's connection is used again only once its batch is settled. A failure is
        raised once every batch still in flight has been settled too, its confirmed rows
        deleted.
        """
        total = 0
        lane = 0
        settling: deque[asyncio.Task[int]] = deque()
        try:
            while True:
                if len(settling) == self.LANES:  # this lane's previous batch
                    total += await settling.popleft()
                flight = await self._claim_and_send(lane)
                if flight is None:
                    break
                settling.append(asyncio.create_task(self._settle(flight)))
                if len(flight.rows) < self._batch_size:
                    break  # the outbox is (nearly) empty: settle and go back to waiting
                if stop is not None and stop.is_set():
                    break
                lane = (lane + 1) % self.LANES
            while settling:
                total += await settling[0]
                settling.popleft()
            return total
        finally:
            # A failure above left these batches in flight: settle them all the same
            # (their confirmed rows deleted) before that failure propagates.
            for task in settling:
                with contextlib.suppress(Exception):
                    await task

    async def _claim_and_send(self, lane: int) -> _InFlight | None:
        """Claim a batch in a new transaction and write it to the broker (None: no rows)."""
        conn = await self._connection(lane)
        spans: list[Span] = []
        try:
            # BEGIN and the claim in one round trip; the rows are in once the pipeline
            # has synced, as its block ends.
            async with conn.pipeline():
                await conn.execute("BEGIN")
                claimed = await conn.execute(CLAIM, {"limit": self._batch_size})
            rows = await claimed.fetchall()
            if not rows:
                await conn.rollback()
                return None
            batch = []
            for row in rows:
                span, outgoing = self._outgoing(row)
                spans.append(span)
                batch.append(outgoing)
            sent = await self._publisher.send_many(batch)
        except BaseException as exc:
            for span in spans:
                _end_failed(span, exc)
            await _rollback(conn)
            raise
        return _InFlight(conn, rows, spans, sent)

    async def _settle(self, flight: _InFlight) -> int:
        """Await the batch's confirms, delete the confirmed rows and commit.

        The deletion and the timeline's lines cost one statement for the batch
        (`PUBLISHED`), the metrics one update per destination; rows that were not
        confirmed stay, and the first failure is raised once the rest is committed.
        """
        conn, rows = flight.conn, flight.rows
        try:
            failures = await flight.sent.outcomes()
        except BaseException as exc:  # cancelled while waiting: nothing is deleted
            for span in flight.spans:
                _end_failed(span, exc)
            await _rollback(conn)
            raise
        confirmed_at = datetime.now(UTC)
        confirmed = []
        for row, span, failure in zip(rows, flight.spans, failures, strict=True):
            if failure is None:
                confirmed.append(row)
                span.end()
            else:
                _end_failed(span, failure)
        try:
            # The deletion and the COMMIT in one round trip. Were the deletion to fail, the
            # pipeline skips the COMMIT and raises as its block ends.
            async with conn.pipeline():
                if confirmed:
                    ids = [row["id"] for row in confirmed]
                    await conn.execute(
                        PUBLISHED, {"ids": ids, "at": confirmed_at, "kind": OUTBOX_PUBLISHED}
                    )
                await conn.execute("COMMIT")
        except BaseException:
            await _rollback(conn)
            raise
        if confirmed:
            _observe(confirmed, confirmed_at)
        log.debug("outbox batch published", rows=len(confirmed), claimed=len(rows))
        failure = next((f for f in failures if f is not None), None)
        if failure is not None:
            if isinstance(failure, Exception):
                raise failure
            # A cancelled confirm (the channel closed under it) must not read as the
            # relay's own cancellation.
            raise ConnectionError(f"publish not confirmed: {failure!r}") from failure
        return len(rows)

    def _outgoing(self, row: dict[str, Any]) -> tuple[Span, Outgoing]:
        """The row's message, and its span: a child of the context the row was written
        in, injected into the message, so that the relay's hop (and its lag) shows in
        the checkout's trace. The span ends when the confirm (or failure) is in; it is
        never made current, since nothing runs inside it."""
        headers = dict(row["headers"])
        span = self._tracer.start_span(
            f"outbox publish {row['routing_key']}",
            context=extract(headers),
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.message.id": str(row["message_id"]),
                "messaging.destination.name": row["exchange"],
            },
        )
        inject(headers, set_span_in_context(span))
        return span, Outgoing(
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
        while moved := await self._publish_backlog():
            total += moved
        return total

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until `stop` is set, reconnecting with backoff after any failure.

        An outage is logged once: its first failure at warning level, the retries that
        follow at debug level, and the first batch through again at info level.
        """
        backoff = 0.5
        while not stop.is_set():
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._listen_url, autocommit=True, **self._connect_kwargs
                ) as listener:
                    await listener.execute("LISTEN outbox")
                    if self._failing_since is None:
                        log.info("relay listening for outbox rows")
                    backoff = 0.5
                    await self._loop(listener, stop)
            except (psycopg.Error, OSError, ConnectionError) as exc:
                self._failed("relay lost a connection; retrying", exc, backoff)
                await self.close()
            except Exception as exc:  # a publish failure: rows stay, retried after backoff
                self._failed("relay could not publish; retrying", exc, backoff)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), backoff)
            backoff = min(backoff * 2, 30.0)
        await self.close()

    def _failed(self, what: str, exc: BaseException, backoff: float) -> None:
        if self._failing_since is None:
            self._failing_since = time.monotonic()
            log.warning(what, error=repr(exc), in_s=backoff)
        else:
            log.debug(what, error=repr(exc), in_s=backoff)

    async def _loop(self, listener: psycopg.AsyncConnection[Any], stop: asyncio.Event) -> None:
        by_notify = True
        while not stop.is_set():
            moved = await self._publish_backlog(stop)  # returns once a batch is not full
            if self._failing_since is not None:
                log.info(
                    "relay publishing again",
                    after_s=round(time.monotonic() - self._failing_since, 1),
                )
                self._failing_since = None
            if by_notify:
                if self._notify_watch.notified():
                    log.info("relay woken by NOTIFY again")
            elif moved and self._notify_watch.poll_found(asyncio.get_running_loop().time()):
                log.warning(
                    "outbox rows found only by the poll, no NOTIFY for a while: is the "
                    "relay's LISTEN going through a pooler? Point CHECKOUT_DATABASE_LISTEN_URL "
                    "straight at PostgreSQL",
                    silent_s=self._notify_watch.silence_s,
                )
            by_notify = await self._wait_for_work(listener, stop)

    async def _wait_for_work(
        self, listener: psycopg.AsyncConnection[Any], stop: asyncio.Event
    ) -> bool:
        """Sleep until a NOTIFY, the poll interval, or a stop, whichever comes first.

        True if a NOTIFY (or the stop) ended the wait, False if the poll interval did.
        """
        woken = False

        async def notified() -> None:
            nonlocal woken
            async for _ in listener.notifies(timeout=self._poll_interval, stop_after=1):
                woken = True

        waiters = {asyncio.ensure_future(notified()), asyncio.ensure_future(stop.wait())}
        done, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for task in done:
            task.result()  # a lost listener connection surfaces here
        return woken or stop.is_set()

    async def close(self) -> None:
        """Close the claiming connections (`run` does this itself when it stops)."""
        for lane, conn in enumerate(self._conns):
            if conn is not None and not conn.closed:
                await conn.close()
            self._conns[lane] = None


SAMPLE_OUTBOX = """
    SELECT count(*) AS pending,
           coalesce(extract(epoch FROM now() - min(created_at)), 0) AS oldest
    FROM outbox
"""
# Served by the partial unique index on active checkouts: cheap at any table size. (The
# states are written out as the index's predicate is; the gauges are set for each of
# infra.db.models' ACTIVE_CHECKOUT_STATES and ACTIVE_CANCELLATION_STATES.)
SAMPLE_ACTIVE = """
    SELECT state, count(*) AS n FROM checkouts
    WHERE state IN ('STARTED', 'PAYMENT_PENDING') GROUP BY state
"""
# Served by the partial unique index on active cancellations, likewise.
SAMPLE_CANCELLATIONS = """
    SELECT state, count(*) AS n FROM cancellations
    WHERE state NOT IN ('CANCELLED', 'REJECTED') GROUP BY state
"""


class _FailureSpell:
    """A run of failures of one kind: the first logged at warning, the rest at debug,
    until a success ends it (as `OutboxRelay._failed` does)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.failing = False

    def failed(self, exc: BaseException) -> None:
        level = log.debug if self.failing else log.warning
        self.failing = True
        level(self.what, error=repr(exc))

    def ended(self) -> None:
        self.failing = False


async def sample_gauges(
    database_url: str,
    publisher: Publisher,
    topology: Topology,
    stop: asyncio.Event,
    interval: float = 5.0,
    connect_kwargs: dict[str, Any] | None = None,
) -> None:
    """Every `interval` s: outbox backlog, active checkouts and cancellations by state,
    dead-letter depths.

    Metrics must never stop the relay: a failure is logged, at warning the first time
    in a row (a missing queue, a permission refused, an outage), and sampling goes on.
    The dead-letter depths are read apart, so that failing to read them does not
    reopen the database connection.
    """
    database = _FailureSpell("could not sample the database gauges")
    dead_letters = _FailureSpell("could not read the dead-letter queues' depths")
    while not stop.is_set():
        try:
            async with await psycopg.AsyncConnection.connect(
                database_url, autocommit=True, row_factory=dict_row, **(connect_kwargs or {})
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
                    for state in ACTIVE_CHECKOUT_STATES:
                        metrics.ACTIVE_CHECKOUTS.labels(state).set(active.get(state, 0))
                    cancelling = {
                        r["state"]: r["n"]
                        for r in await (await conn.execute(SAMPLE_CANCELLATIONS)).fetchall()
                    }
                    for state in ACTIVE_CANCELLATION_STATES:
                        metrics.ACTIVE_CANCELLATIONS.labels(state).set(cancelling.get(state, 0))
                    database.ended()
                    try:
                        depths = await dlq_depths(publisher.connection, topology)
                    except Exception as exc:
                        dead_letters.failed(exc)
                    else:
                        dead_letters.ended()
                        for queue, depth in depths.items():
                            metrics.DLQ_DEPTH.labels(queue).set(depth)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), interval)
        except Exception as exc:
            database.failed(exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """Declare the topology, then relay until `stop` is set."""
    topology = Topology.from_settings(settings)
    database_url = libpq_url(settings.database_url.get_secret_value())
    kwargs = connect_kwargs(settings.database_prepare)
    # Declared on a connection of its own, apart from the publisher's (`declare_apart`).
    await declare_apart(settings.rabbit_url.get_secret_value(), topology)
    publisher = await Publisher.connect(
        settings.rabbit_url.get_secret_value(), name=f"{settings.namespace}.relay"
    )
    try:
        relay = OutboxRelay(
            database_url,
            publisher,
            topology,
            batch_size=settings.relay_batch_size,
            poll_interval=settings.relay_poll_interval,
            listen_url=libpq_url(settings.listen_url),
            prepare=settings.database_prepare,
        )

        async def broker_ok() -> bool:
            return publisher.is_connected

        async def database_ok() -> bool:
            async with await psycopg.AsyncConnection.connect(database_url, **kwargs) as conn:
                await conn.execute("SELECT 1")
            return True

        checks = {"broker": broker_ok, "database": database_ok}
        async with serving_health(settings, "relay", checks):
            sampler = asyncio.create_task(
                sample_gauges(database_url, publisher, topology, stop, connect_kwargs=kwargs)
            )
            await relay.run(stop)
            await sampler
    finally:
        await publisher.close()


def run(settings: Settings) -> None:
    """`checkout relay`: run until SIGINT or SIGTERM; the batch in hand is finished first."""
    configure_logging(settings, "relay")
    configure_tracing(settings, "relay")
    name_connections(settings, "relay")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(settings, stop)
        log.info("relay stopped")

    freeze_startup()
    # uvloop: a faster event loop (LIMITS.md: +75% for uvicorn; the relay is I/O-bound too).
    uvloop.run(main())
