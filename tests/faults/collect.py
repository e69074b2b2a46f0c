"""Gathering the facts the checker judges: database, simulated services, queues, logs.

Everything here reads; nothing changes the system (dead-letter queues are read with
`basic.get` without ack and the channel is closed, so every message goes back).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import psycopg

from infra.db.migrate import libpq_url
from infra.messaging import failures
from infra.messaging.topology import Topology
from tests.faults import system as sysmod
from tests.faults.checker import (
    Applied,
    DeadLetter,
    Facts,
    LoggedFailure,
    MockRequest,
    ServiceCall,
)
from tests.faults.system import FaultSystem

# Log events, as the parts write them.
SKIPPED = "duplicate message skipped"
WILL_RETRY = "handling failed; will retry"
APPLIED = {
    "effect applied": None,  # the consumer is the part that logged it
    "checkout transition": "saga",
    # A charge whose checkout ended meanwhile (its deadline's reconciliation failed it):
    # handled to its end, charging nothing, once.
    "checkout is final; not charging": "saga",
    # Older wording of the consumers' line.
    "invoice created": "invoice",
    "confirmation e-mail sent": "email",
    "order sent to production": "production",
}
FAILED_ATTEMPT = {
    WILL_RETRY,
    "service call timed out",
    "service unreachable",
    "service call failed; transient",
    "circuit open; not calling",
    "could not re-publish a failed message; requeueing it",
    "could not re-publish a failed message yet; retrying",
    "dead-lettering message",
}
BROKER_LOST = {
    "broker connection lost; reconnecting",
    "relay lost a connection; retrying",
    "relay could not publish; retrying",
}
SERVICE_PATHS = {  # with each stored answer's status code
    "payments": "/mock/payments?include=status_code",
    "emails": "/mock/emails?include=status_code",
    "production": "/mock/production/orders?include=status_code",
    "refunds": "/mock/refunds?include=status_code",
}
_ORDER_IN_TEXT = re.compile(r"order ([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")


def _ts(value: object) -> float:
    try:
        return datetime.fromisoformat(str(value)).timestamp()
    except ValueError:
        return 0.0


def read_logs(logs: dict[str, Path], facts: Facts) -> None:
    """Fill the log-derived facts from every part's JSON log."""
    skipped: Counter[str] = Counter()
    lost: Counter[str] = Counter()
    for part, path in logs.items():
        try:
            lines = path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            continue
        for line in lines:
            if not line.startswith("{"):
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut short by SIGKILL
            if not isinstance(record, dict):
                continue
            event = record.get("event")
            ts = _ts(record.get("timestamp"))
            message_id = record.get("message_id")
            if event == SKIPPED:
                skipped[part] += 1
            elif event in APPLIED and message_id:
                facts.applied.append(Applied(APPLIED[event] or part, str(message_id), ts))
            elif event == "mock_request":
                facts.mock_requests.append(
                    MockRequest(
                        service=str(record.get("service")),
                        key=record.get("idempotency_key"),
                        outcome=str(record.get("outcome")),
                        status_code=int(record.get("status_code") or 0),
                        ts=ts,
                    )
                )
            if event in FAILED_ATTEMPT:
                facts.failures.append(
                    LoggedFailure(
                        part,
                        str(message_id) if message_id else None,
                        str(record["checkout_id"]) if record.get("checkout_id") else None,
                        str(event),
                        ts,
                    )
                )
                if event == WILL_RETRY:
                    facts.retries += 1
            if event in BROKER_LOST:
                lost[part] += 1
    facts.skipped = dict(skipped)
    facts.stats["broker_losses_logged"] = sum(lost.values())
    facts.stats["failed_attempts_logged"] = len(facts.failures)


async def read_services(mocks: str, facts: Facts) -> None:
    async with httpx.AsyncClient(base_url=mocks, timeout=10) as client:
        for service, path in SERVICE_PATHS.items():
            response = await client.get(path)
            response.raise_for_status()
            calls = [_service_call(service, entry) for entry in response.json()]
            {
                "payments": facts.charges,
                "emails": facts.emails,
                "production": facts.productions,
                "refunds": facts.refunds,
            }[service].extend(calls)


def _service_call(service: str, entry: dict[str, Any]) -> ServiceCall:
    request = entry.get("request") or {}
    response = entry.get("response") or {}
    status = entry.get("status_code")
    if service == "emails":
        match = _ORDER_IN_TEXT.search(str(request.get("body", "")))
        order_id = match.group(1) if match else None
        succeeded = status == 202
    elif service == "refunds":
        order_id = None  # a refund names the payment it returns (`reference`)
        succeeded = status == 201 and response.get("status") == "SUCCEEDED"
    else:
        order_id = request.get("order_id")
        succeeded = status == 201 and (
            service != "payments" or response.get("status") == "SUCCESSFUL"
        )
    reference = {
        "payments": response.get("payment_id"),
        "refunds": request.get("payment_id"),
    }.get(service)
    return ServiceCall(
        service=service,
        key=entry.get("idempotency_key"),
        attempts=int(entry.get("attempts") or 0),
        order_id=str(order_id) if order_id else None,
        status_code=status,
        succeeded=bool(succeeded),
        reference=str(reference) if reference else None,
    )


async def _scalar(conn: psycopg.AsyncConnection[Any], query: str) -> int:
    row = await (await conn.execute(query)).fetchone()
    return int(row[0]) if row else 0


async def _applied_records(conn: psycopg.AsyncConnection[Any]) -> list[Applied]:
    """The consumers' `effect.applied` timeline rows (written with the effect itself)."""
    if not await _scalar(
        conn, "SELECT count(*) FROM pg_tables WHERE tablename = 'checkout_events'"
    ):
        return []
    rows = await (
        await conn.execute(
            "SELECT source, message_id, at FROM checkout_events "
            "WHERE kind = 'effect.applied' AND message_id IS NOT NULL"
        )
    ).fetchall()
    return [Applied(s, str(m), at.timestamp(), "db") for s, m, at in rows]


async def read_applied(system: FaultSystem) -> list[Applied]:
    """Every application the consumers recorded, in the database and in their logs."""
    url = libpq_url(system.settings.database_url.get_secret_value())
    async with await psycopg.AsyncConnection.connect(url) as conn:
        applied = await _applied_records(conn)
    facts = Facts()
    read_logs(system.part_logs(), facts)
    return applied + facts.applied


async def read_database(database_url: str, facts: Facts) -> None:
    async with await psycopg.AsyncConnection.connect(libpq_url(database_url)) as conn:
        rows = await (await conn.execute("SELECT order_id, status FROM orders")).fetchall()
        facts.orders = {str(o): s for o, s in rows}
        rows = await (
            await conn.execute("SELECT checkout_id, order_id, state FROM checkouts")
        ).fetchall()
        facts.checkouts = {str(c): (str(o), s) for c, o, s in rows}
        rows = await (
            await conn.execute("SELECT cancellation_id, order_id, state FROM cancellations")
        ).fetchall()
        facts.cancellations = {str(c): (str(o), s) for c, o, s in rows}
        rows = await (
            await conn.execute("SELECT order_id, source_message_id FROM invoices")
        ).fetchall()
        facts.invoices = [(str(o), str(m)) for o, m in rows]
        facts.outbox = await _scalar(conn, "SELECT count(*) FROM outbox")
        facts.applied += await _applied_records(conn)


def letter_of(dlq: str, message: aio_pika.abc.AbstractIncomingMessage) -> DeadLetter:
    headers = message.headers or {}
    attempts = headers.get(failures.ATTEMPTS)

    def text(name: str) -> str | None:
        value = headers.get(name)
        if isinstance(value, bytes):
            value = value.decode(errors="replace")
        return str(value) if value is not None else None

    return DeadLetter(
        dlq=dlq,
        message_id=message.message_id,
        failure_kind=text(failures.FAILURE_KIND),
        original_queue=text(failures.ORIGINAL_QUEUE),
        attempts=attempts if isinstance(attempts, int) else None,
        error_type=text(failures.ERROR_TYPE),
        error_message=text(failures.ERROR_MESSAGE),
    )


async def peek_dead_letters(
    connection: aio_pika.abc.AbstractConnection, topology: Topology
) -> list[DeadLetter]:
    """Every message of every dead-letter queue, left where it is."""
    letters = []
    for queue in topology.queues.values():
        channel = await connection.channel()
        try:
            declared = await channel.declare_queue(queue.dlq, passive=True)
            for _ in range(declared.declaration_result.message_count or 0):
                message = await declared.get(no_ack=False, fail=False)
                if message is None:
                    break
                letters.append(letter_of(queue.dlq, message))
        finally:
            await channel.close()  # unacked -> back to the queue, in order
    return letters


async def queue_depths(
    connection: aio_pika.abc.AbstractConnection, topology: Topology
) -> dict[str, int]:
    """Ready messages in every consumed queue and wait queue."""
    depths = {}
    channel = await connection.channel()
    try:
        for queue in topology.queues.values():
            names = [queue.name] + [f"{queue.name}.wait.{d}" for d in set(queue.retry_delays_ms)]
            for name in names:
                declared = await channel.declare_queue(name, passive=True)
                depths[name] = declared.declaration_result.message_count or 0
    finally:
        await channel.close()
    return depths


async def _settle_state(
    system: FaultSystem,
    connection: aio_pika.abc.AbstractConnection,
    accepted: Iterable[str],
    expected_dead: set[tuple[str, str]],
) -> dict[str, Any]:
    url = libpq_url(system.settings.database_url.get_secret_value())
    async with await psycopg.AsyncConnection.connect(url) as conn:
        states: dict[str, int] = dict(
            await (
                await conn.execute(
                    "SELECT state, count(*) FROM checkouts WHERE checkout_id = ANY(%s) "
                    "GROUP BY state",
                    ([str(a) for a in accepted],),
                )
            ).fetchall()
        )
        outbox = await _scalar(conn, "SELECT count(*) FROM outbox")
        open_cancellations = await _scalar(
            conn, "SELECT count(*) FROM cancellations WHERE state NOT IN ('CANCELLED', 'REJECTED')"
        )
        missing_effects = await _scalar(
            conn,
            "SELECT count(*) FROM orders o WHERE o.status = 'PAID' AND ("
            " NOT EXISTS (SELECT 1 FROM invoices i WHERE i.order_id = o.order_id) OR"
            " NOT EXISTS (SELECT 1 FROM email_notifications e WHERE e.order_id = o.order_id) OR"
            " NOT EXISTS (SELECT 1 FROM production_submissions p WHERE p.order_id = o.order_id))",
        )
    depths = await queue_depths(connection, system.topology)
    state: dict[str, Any] = {
        "open_checkouts": sum(n for s, n in states.items() if s not in ("PAID", "FAILED")),
        "open_cancellations": open_cancellations,
        "outbox": outbox,
        "paid_without_effects": missing_effects,
        "queued": sum(depths.values()),
    }
    if expected_dead and not any(state.values()):
        letters = await peek_dead_letters(connection, system.topology)
        have = {(d.dlq, d.message_id) for d in letters}
        state["dead_letters_missing"] = len(expected_dead - have)
    return state


async def wait_quiet(
    system: FaultSystem,
    accepted: Iterable[str],
    *,
    expected_dead: set[tuple[str, str]] | None = None,
    timeout: float = 60.0,
) -> tuple[bool, float, dict[str, Any]]:
    """Poll until every accepted checkout is final, the outbox and queues are empty and
    every paid order has its effects (twice in a row, then once more by the broker's
    own count, unacked included). Returns (quiet, seconds, last state)."""
    started = time.monotonic()
    accepted = list(accepted)
    quiet_polls = 0
    state: dict[str, Any] = {}
    connection = await aio_pika.connect(system.settings.rabbit_url.get_secret_value())
    async with connection:
        while time.monotonic() - started < timeout:
            state = await _settle_state(system, connection, accepted, expected_dead or set())
            quiet_polls = quiet_polls + 1 if not any(state.values()) else 0
            if quiet_polls >= 2:
                if sysmod.RABBITMQCTL is None:
                    return True, time.monotonic() - started, state
                totals = await sysmod.queue_totals(system.namespace)
                busy = {
                    q: t
                    for q, t in totals.items()
                    if not q.endswith((".dlq", ".orders.log")) and any(t)
                }
                if not busy:
                    return True, time.monotonic() - started, state
                state["broker_busy"] = busy
                quiet_polls = 0
            await asyncio.sleep(0.5)
    return False, time.monotonic() - started, state


async def gather_facts(system: FaultSystem, facts: Facts) -> Facts:
    """Database, services, queues and logs, added to `facts` (which holds what was injected)."""
    await read_database(system.settings.database_url.get_secret_value(), facts)
    await read_services(system.mocks, facts)
    connection = await aio_pika.connect(system.settings.rabbit_url.get_secret_value())
    async with connection:
        facts.dead_letters = await peek_dead_letters(connection, system.topology)
        facts.queues = {
            q: n for q, n in (await queue_depths(connection, system.topology)).items() if n
        }
    read_logs(system.part_logs(), facts)
    for name, proxy in system.proxies.items():
        s = proxy.stats
        facts.stats[f"proxy_{name}"] = (
            f"{s.connections}conn/{s.connections_reset}rst/{s.refused}refused"
        )
    facts.stats["restarts"] = len(system.restarts)
    facts.stats["repeated_keys"] = sum(
        1 for c in facts.charges + facts.emails + facts.productions if c.attempts > 1
    )
    return facts
