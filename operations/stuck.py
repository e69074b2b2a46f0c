"""Stuck work, found for you: what is not final for too long, what it waits for, the repair.

`find_stuck` reads the database: every checkout and every cancellation not final for
longer than a threshold, with what it waits for:

- a deadline, and when it fires (the saga reconciles it then; nothing to do but keep
  a saga running);
- an outbox row not published, and for how long (the relay is down or failing);
- the Payment Service, when its last reconciliation got no answer;
- a message parked in a dead-letter queue (`_attach_dead_letters` reads the queues
  without consuming: `operations.timeline.query.scan_dead_letters`), with the replay that
  repairs it.

`stuck_report` is the whole report, for `checkout stuck` and the console's stuck page
alike, so both list the same items with the same reasons: the database first, then,
only when something is stuck, the dead-letter queues (read, not consumed) and the
saga process's open breakers.

`count_stuck` is the cheap part alone (one statement), for the gauge `checkout_stuck`
by kind and state, which the saga process refreshes (`run_stuck_gauge`) and the CLI
sets as it reports; an alert on `max(checkout_stuck) > 0` is in the README.

Only the process that holds a circuit breaker knows whether it is open. `_open_breakers`
asks the saga process's own metrics endpoint (`checkout_circuit_breaker_open`, the
health port) when it can reach it; otherwise what the breaker left behind still shows:
a dead letter's or a reconciliation's last error ("circuit breaker is open", "answered
503").
"""

from __future__ import annotations

import asyncio
import re
import shlex
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import aiohttp
import structlog
from aio_pika.abc import AbstractConnection
from aio_pika.exceptions import AMQPError
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from infra.db.models import (
    ACTIVE_CANCELLATION_STATES,
    ACTIVE_CHECKOUT_STATES,
    FINAL_CANCELLATION_STATES,
)
from infra.health_ports import known_health_ports
from infra.messaging.topology import Topology
from infra.metrics import STUCK
from infra.settings import Settings
from operations.timeline.query import scan_dead_letters

log = structlog.get_logger()

DEFAULT_OLDER_THAN = timedelta(minutes=5)
GAUGE_INTERVAL = 30.0
# The states not final, each a label pair of the gauge.
KINDS_STATES = {"checkout": ACTIVE_CHECKOUT_STATES, "cancellation": ACTIVE_CANCELLATION_STATES}


def _sql_list(states: Sequence[str]) -> str:
    return ", ".join(f"'{state}'" for state in states)


# As the partial indexes say it: a checkout's active states, a cancellation's final ones.
_CHECKOUT_NOT_FINAL = f"state IN ({_sql_list(ACTIVE_CHECKOUT_STATES)})"
_CANCELLATION_NOT_FINAL = f"state NOT IN ({_sql_list(FINAL_CANCELLATION_STATES)})"

_CHECKOUTS = text(
    "SELECT 'checkout', checkout_id, order_id, state, created_at FROM checkouts"  # noqa: S608 (constants)
    f" WHERE {_CHECKOUT_NOT_FINAL} AND created_at < :before"
    " ORDER BY created_at"
)
_CANCELLATIONS = text(
    "SELECT 'cancellation', cancellation_id, order_id, state, created_at FROM cancellations"  # noqa: S608 (constants)
    f" WHERE {_CANCELLATION_NOT_FINAL} AND created_at < :before"
    " ORDER BY created_at"
)
_CANCELLATION_CHECKOUTS = text(
    "SELECT cancellation_id, checkout_id FROM cancellations WHERE cancellation_id = ANY(:ids)"
)
_DEADLINES = text(
    "SELECT saga_id, kind, due_at, attempts FROM deadlines WHERE saga_id = ANY(:ids)"
    " ORDER BY due_at"
)
_OUTBOX = text(
    "SELECT correlation_id, message_type, message_id, created_at FROM outbox"
    " WHERE correlation_id = ANY(:ids) ORDER BY id"
)
_LAST_STEPS = text(
    "SELECT DISTINCT ON (checkout_id) checkout_id, name, detail, at FROM checkout_steps"
    " WHERE checkout_id = ANY(:ids) ORDER BY checkout_id, id DESC"
)
_COUNT = text(
    "SELECT 'checkout', state, count(*) FROM checkouts"  # noqa: S608 (constants)
    f" WHERE {_CHECKOUT_NOT_FINAL} AND created_at < :before GROUP BY 2"
    " UNION ALL SELECT 'cancellation', state, count(*) FROM cancellations"
    f" WHERE {_CANCELLATION_NOT_FINAL} AND created_at < :before GROUP BY 2"
)


@dataclass(frozen=True)
class Waiting:
    """One thing a stuck saga waits for, and the command that repairs it (None: nothing
    to do but let the system run)."""

    what: str  # deadline | outbox | service | dead_letter | checkout | unknown
    detail: str
    repair: str | None = None
    # A dead letter's consumed queue and message id: what a replay of it takes (the
    # console's repair button); in `repair` as a command already.
    queue: str | None = None
    message_id: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"what": self.what, "detail": self.detail, "repair": self.repair}


@dataclass
class Stuck:
    """A checkout or cancellation not final for longer than the threshold."""

    kind: str  # checkout | cancellation
    id: uuid.UUID
    order_id: uuid.UUID
    state: str
    since: datetime
    age: timedelta
    waiting: list[Waiting] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "id": str(self.id),
            "order_id": str(self.order_id),
            "state": self.state,
            "since": self.since.isoformat(),
            "age_seconds": round(self.age.total_seconds(), 1),
            "waiting_for": [w.as_json() for w in self.waiting],
            "trace": f"checkout trace {self.order_id}",
        }


@dataclass
class Report:
    """What `checkout stuck` found."""

    checked_at: datetime
    older_than: timedelta
    stuck: list[Stuck]
    dead_letters_read: bool = False
    broker_error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "checked_at": self.checked_at.isoformat(),
            "older_than_seconds": self.older_than.total_seconds(),
            "dead_letter_queues_read": self.dead_letters_read,
            "broker_error": self.broker_error,
            "stuck": [s.as_json() for s in self.stuck],
        }


# Given whether the queues are wanted, a broker connection or (None, why not).
BrokerOpener = Callable[
    [bool], AbstractAsyncContextManager[tuple[AbstractConnection | None, str | None]]
]


def saga_metrics_url(settings: Settings) -> str | None:
    """The saga process's metrics endpoint, where its breakers show (None: not known)."""
    port = known_health_ports(settings).get("saga")
    return f"http://{settings.health_host}:{port}/metrics" if port else None


async def stuck_report(
    engine: AsyncEngine,
    older_than: timedelta,
    broker: BrokerOpener,
    topology: Topology,
    metrics_url: str | None,
) -> Report:
    """Everything not final for longer than `older_than`, with what it waits for."""
    async with engine.connect() as conn:
        now = (await conn.execute(text("SELECT now()"))).scalar_one()
        found = await find_stuck(conn, now, older_than)
    report = Report(now, older_than, found)
    async with broker(bool(found)) as (rabbit, error):
        if rabbit is not None:
            # A broker lost while its queues are read costs the report its dead
            # letters, not the rest of what the database said.
            try:
                await _attach_dead_letters(found, rabbit, topology)
                report.dead_letters_read = True
            except (AMQPError, OSError, RuntimeError) as exc:  # RuntimeError: closed
                error = f"reading the dead-letter queues failed ({exc!r:.160})"
        report.broker_error = error
    if found and metrics_url:
        open_ = await _open_breakers(metrics_url)
        if open_:
            attach_breakers(found, open_, metrics_url)
    _finish(found)
    return report


async def find_stuck(conn: AsyncConnection, now: datetime, older_than: timedelta) -> list[Stuck]:
    """Every checkout and cancellation not final since before `now - older_than`, with
    what the database says it waits for (dead letters: `_attach_dead_letters`)."""
    before = now - older_than
    rows = list((await conn.execute(_CHECKOUTS, {"before": before})).all())
    rows += list((await conn.execute(_CANCELLATIONS, {"before": before})).all())
    found = [Stuck(kind, sid, oid, state, at, now - at) for kind, sid, oid, state, at in rows]
    if not found:
        return []
    ids = [s.id for s in found]
    deadlines: dict[uuid.UUID, list[Any]] = {}
    for saga_id, kind, due_at, attempts in await conn.execute(_DEADLINES, {"ids": ids}):
        deadlines.setdefault(saga_id, []).append((kind, due_at, attempts))
    outbox: dict[uuid.UUID, list[Any]] = {}
    for correlation_id, message_type, message_id, created in await conn.execute(
        _OUTBOX, {"ids": ids}
    ):
        outbox.setdefault(correlation_id, []).append((message_type, message_id, created))
    last = {row[0]: row[1:] for row in await conn.execute(_LAST_STEPS, {"ids": ids})}
    waits_on: dict[uuid.UUID, uuid.UUID] = {}
    cancellations = [s.id for s in found if s.kind == "cancellation"]
    if cancellations:
        rows2 = await conn.execute(_CANCELLATION_CHECKOUTS, {"ids": cancellations})
        waits_on = {c: k for c, k in rows2.all() if k is not None}
    for item in found:
        for kind, due_at, attempts in deadlines.get(item.id, []):
            when = "overdue" if due_at <= now else f"in {_duration(due_at - now)}"
            fired = f", fired {attempts} time{'s' if attempts != 1 else ''}" if attempts else ""
            item.waiting.append(
                Waiting(
                    "deadline",
                    f"{kind} deadline at {due_at.isoformat(timespec='seconds')} ({when}{fired})",
                    None if due_at > now else "checkout saga   # a saga instance fires it",
                )
            )
        for message_type, message_id, created in outbox.get(item.id, []):
            item.waiting.append(
                Waiting(
                    "outbox",
                    f"{message_type} {message_id} unpublished for {_duration(now - created)}",
                    "checkout relay   # publishes the outbox (is a relay running?)",
                )
            )
        step = last.get(item.id)
        if step is not None and step[0] == "payment.reconciliation":
            item.waiting.append(
                Waiting(
                    "service",
                    f"Payment Service, last asked at {step[2].isoformat(timespec='seconds')}: "
                    f"{step[1]}",
                    _service_back("payment", "the saga asks it again by itself"),
                )
            )
        if item.id in waits_on and item.state == "WAITING_FOR_CHECKOUT":
            item.waiting.append(Waiting("checkout", f"checkout {waits_on[item.id]} to end", None))
    return found


async def _attach_dead_letters(
    found: Sequence[Stuck], rabbit: AbstractConnection, topology: Topology
) -> None:
    """Add the messages of `found` parked in a dead-letter queue (read, not consumed)."""
    if not found:
        return
    scan = await scan_dead_letters(rabbit, topology, [s.id for s in found])
    by_id = {str(s.id): s for s in found}
    for letter in scan.letters:
        item = by_id.get(str(letter.correlation_id))
        if item is None:
            continue
        short = letter.queue.rsplit(".", 1)[-1]
        reason = f"stuck: {item.kind} {item.id}"
        item.waiting.append(
            Waiting(
                "dead_letter",
                f"{letter.message_type} {letter.message_id} in {letter.dlq}"
                f" after {letter.attempts} attempt(s): {letter.error}",
                f"checkout dlq replay {short} --message-id {letter.message_id}"
                f" --reason {shlex.quote(reason)}",
                queue=letter.queue,
                message_id=letter.message_id,
            )
        )


# Which stuck state waits on which service's breaker (the metric's `service` label).
BREAKER_WAITERS = {
    "payment": {("checkout", "PAYMENT_PENDING")},
    "refunds": {("cancellation", "REFUNDING")},
    "production": {("cancellation", "CANCELLING_PRODUCTION")},
}


def breakers_open(metrics_text: str) -> set[str]:
    """The services whose breaker is open, from a process's Prometheus text."""
    open_: set[str] = set()
    for family in text_string_to_metric_families(metrics_text):
        if family.name != "checkout_circuit_breaker_open":
            continue
        for sample in family.samples:
            if sample.value >= 1:
                open_.add(sample.labels.get("service", "?"))
    return open_


BREAKER_TIMEOUT = 2.0


async def _open_breakers(metrics_url: str) -> set[str] | None:
    """The services whose breaker the process at `metrics_url` has open (None: it did
    not answer, so nothing is known)."""
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=BREAKER_TIMEOUT)) as session,
            session.get(metrics_url) as response,
        ):
            if response.status != 200:
                return None
            return breakers_open(await response.text())
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None


def attach_breakers(found: Sequence[Stuck], open_: set[str], where: str) -> None:
    """Add an open breaker to every stuck item whose state waits on that service."""
    for service in sorted(open_):
        for item in found:
            if (item.kind, item.state) in BREAKER_WAITERS.get(service, set()):
                item.waiting.append(
                    Waiting(
                        "service",
                        f"{service} circuit breaker open in the saga process ({where}): the "
                        "service has been failing; calls resume after its pause",
                        _service_back(
                            service,
                            "then replay what it parked in a dead-letter queue (listed here, "
                            "if any); the breaker closes at the next call",
                        ),
                    )
                )


def _service_back(service: str, then: str) -> str:
    """A service's repair: nothing to run here; the service itself must answer again."""
    return f"# bring the {service} service back (CHECKOUT_{service.upper()}_URL); {then}"


def _finish(found: Sequence[Stuck]) -> None:
    """Give every item with nothing found to wait for a line that says so."""
    for item in found:
        if not item.waiting:
            item.waiting.append(
                Waiting(
                    "unknown",
                    "nothing scheduled: no deadline, no unpublished or parked message",
                    f"checkout trace {item.order_id}   # see its last hop",
                )
            )


async def count_stuck(
    conn: AsyncConnection, now: datetime, older_than: timedelta
) -> dict[tuple[str, str], int]:
    """How many are stuck, by kind and state (one statement)."""
    rows = await conn.execute(_COUNT, {"before": now - older_than})
    return {(kind, state): int(n) for kind, state, n in rows.all()}


def set_gauge(counts: dict[tuple[str, str], int]) -> None:
    """`checkout_stuck{kind,state}`, every known pair (0 when none is stuck)."""
    for kind, states in KINDS_STATES.items():
        for state in states:
            STUCK.labels(kind, state).set(counts.get((kind, state), 0))


async def run_stuck_gauge(
    engine: AsyncEngine,
    older_than: timedelta = DEFAULT_OLDER_THAN,
    interval: float = GAUGE_INTERVAL,
) -> None:
    """Refresh the gauge every `interval` seconds until cancelled (the saga process)."""
    while True:
        try:
            async with engine.connect() as conn:
                now = (await conn.execute(text("SELECT now()"))).scalar_one()
                set_gauge(await count_stuck(conn, now, older_than))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("could not count stuck work", error=repr(exc))
        await asyncio.sleep(interval)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(value: str) -> timedelta:
    """`90s`, `5m`, `2h`, `1d` or plain seconds; ValueError otherwise."""
    match = _DURATION.match(value)
    if match is None:
        raise ValueError(f"{value!r} is not a duration such as 90s, 5m, 2h or 1d")
    return timedelta(seconds=float(match.group(1)) * _UNIT[match.group(2)])


def _duration(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"
