"""Loading one checkout's (or one order's) timeline: the rows from PostgreSQL, and
optionally the messages parked in the dead-letter queues. Merging is `operations.timeline.merge`.

Every statement is an index look-up by checkout or order id, except two that are
small by design: `outbox` (the relay deletes what it published, so it holds only what
is stuck) and `dlq_audit`, found through its GIN index on `message_ids`.

Reading the dead-letter queues uses `operations.dlq.reading`: messages are taken with
`basic.get`, never acked, and return to their queue in their order when the channel
closes. Each queue is read up to `scan_limit` messages; a deeper queue is reported as
partly read.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from aio_pika.abc import AbstractConnection
from aio_pika.exceptions import AMQPError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from infra.logging import mask_email
from infra.messaging import failures
from infra.messaging.topology import Topology
from infra.timeline.record import Event
from operations.dlq.errors import QueueNotDeclared
from operations.dlq.letters import DeadLetter
from operations.dlq.reading import reading
from operations.dlq.replay import REPLAY_COUNT
from operations.timeline.merge import (
    AuditRow,
    BrokerScan,
    CheckoutRow,
    EffectRow,
    LetterRow,
    OrderRow,
    OutboxRow,
    PaymentRow,
    Sources,
    StepRow,
    Trace,
    build,
    message_types,
)

EVENT_LIMIT = 5000  # per trace; a checkout retried without end should not flood the screen
SCAN_LIMIT = 5000  # messages read per dead-letter queue

RESOLVE = text(
    """
    SELECT order_id, NULL::uuid AS checkout_id FROM orders WHERE order_id = :id
    UNION ALL
    SELECT order_id, checkout_id FROM checkouts WHERE checkout_id = :id
    UNION ALL
    SELECT order_id, NULL::uuid FROM cancellations WHERE cancellation_id = :id
    """
)
"""A cancellation's id traces its order (the cancellation beside the checkouts)."""
ORDER = text(
    "SELECT order_id, order_name, amount, currency, status, created_at, updated_at "
    "FROM orders WHERE order_id = :order_id"
)
CHECKOUTS_OF_ORDER = text(
    "SELECT checkout_id, order_id, state, failure_reason, trace_id, created_at, updated_at "
    "FROM checkouts WHERE order_id = :order_id ORDER BY created_at, checkout_id"
)
CHECKOUT = text(
    "SELECT checkout_id, order_id, state, failure_reason, trace_id, created_at, updated_at "
    "FROM checkouts WHERE checkout_id = :checkout_id"
)
CANCELLATIONS = text(
    "SELECT cancellation_id AS checkout_id, order_id, state, rejection_reason AS failure_reason,"
    " trace_id, created_at, updated_at FROM cancellations WHERE order_id = :order_id"
    " AND (CAST(:checkout_id AS uuid) IS NULL OR checkout_id = :checkout_id)"
    " ORDER BY created_at, cancellation_id"
)
CANCELLATION_STEPS = text(
    "SELECT cancellation_id AS checkout_id, name, status, at, detail FROM cancellation_steps "
    "WHERE cancellation_id = ANY(:ids) ORDER BY id"
)
STEPS = text(
    "SELECT checkout_id, name, status, at, detail FROM checkout_steps "
    "WHERE checkout_id = ANY(:ids) ORDER BY id"
)
EVENTS = text(
    "SELECT checkout_id, order_id, at, source, kind, message_id, message_type, duration_ms, "
    "detail FROM checkout_events WHERE checkout_id = ANY(:ids) ORDER BY at, id LIMIT :limit"
)
PAYMENTS = text(
    "SELECT checkout_id, payment_id, amount, currency, status, provider_payment_id, "
    "failure_reason, created_at, updated_at FROM payments WHERE checkout_id = ANY(:ids)"
)
INVOICES = text(
    "SELECT checkout_id, source_message_id, created_at, invoice_id, amount, currency, status "
    "FROM invoices WHERE order_id = :order_id"
)
EMAILS = text(
    "SELECT checkout_id, source_message_id, sent_at, recipient "
    "FROM email_notifications WHERE order_id = :order_id"
)
PRODUCTION = text(
    "SELECT checkout_id, source_message_id, submitted_at, production_reference "
    "FROM production_submissions WHERE order_id = :order_id"
)
OUTBOX = text(
    "SELECT correlation_id, message_id, message_type, routing_key, created_at "
    "FROM outbox WHERE correlation_id = ANY(:ids) ORDER BY id"
)
AUDIT = text(
    "SELECT id, at, actor, action, queue, dlq, message_ids, reason, outcome "
    "FROM dlq_audit WHERE message_ids ?| CAST(:ids AS text[]) ORDER BY at, id"
)


async def resolve(conn: AsyncConnection, target: uuid.UUID) -> tuple[uuid.UUID, uuid.UUID | None]:
    """(order id, checkout id or None) for an order's or a checkout's id; KeyError if neither."""
    row = (await conn.execute(RESOLVE, {"id": target})).first()
    if row is None:
        raise KeyError(target)
    return row.order_id, row.checkout_id


async def load_sources(
    conn: AsyncConnection, target: uuid.UUID, *, now: datetime | None = None
) -> Sources | None:
    """Every database row of the order's checkouts (or of one checkout) but the audit
    log, which needs the message ids these rows name; None for an unknown id."""
    try:
        order_id, checkout_id = await resolve(conn, target)
    except KeyError:
        return None
    order = OrderRow(**(await conn.execute(ORDER, {"order_id": order_id})).one()._asdict())
    if checkout_id is None:
        rows = (await conn.execute(CHECKOUTS_OF_ORDER, {"order_id": order_id})).all()
    else:
        rows = (await conn.execute(CHECKOUT, {"checkout_id": checkout_id})).all()
    checkouts = [CheckoutRow(**r._asdict()) for r in rows]
    wanted = {"order_id": order_id, "checkout_id": checkout_id}
    cancellations = [
        CheckoutRow(**r._asdict()) for r in (await conn.execute(CANCELLATIONS, wanted)).all()
    ]
    # A cancellation's messages and events carry it as their correlation id, so the
    # statements below find them by its id as they find a checkout's by the checkout's.
    ids = [c.checkout_id for c in (*checkouts, *cancellations)]
    sources = Sources(
        order=order,
        checkouts=checkouts,
        now=now or datetime.now(UTC),
        target="order" if checkout_id is None else "checkout",
        cancellations=cancellations,
    )
    if not ids:
        return sources
    by_ids = {"ids": ids}
    sources.steps = [StepRow(**r._asdict()) for r in (await conn.execute(STEPS, by_ids)).all()]
    sources.steps += [
        StepRow(**r._asdict()) for r in (await conn.execute(CANCELLATION_STEPS, by_ids)).all()
    ]
    events = (await conn.execute(EVENTS, {**by_ids, "limit": EVENT_LIMIT + 1})).all()
    sources.events_truncated = len(events) > EVENT_LIMIT
    sources.events = [Event(**r._asdict()) for r in events[:EVENT_LIMIT]]
    sources.payments = [
        PaymentRow(**r._asdict()) for r in (await conn.execute(PAYMENTS, by_ids)).all()
    ]
    sources.effects = [
        effect for effect in await _effects(conn, order_id) if effect.checkout_id in set(ids)
    ]
    sources.outbox = [
        OutboxRow(
            checkout_id=r.correlation_id,
            message_id=r.message_id,
            message_type=r.message_type,
            routing_key=r.routing_key,
            created_at=r.created_at,
        )
        for r in (await conn.execute(OUTBOX, by_ids)).all()
    ]
    return sources


async def _effects(conn: AsyncConnection, order_id: uuid.UUID) -> list[EffectRow]:
    params = {"order_id": order_id}
    effects = [
        EffectRow(
            "invoice",
            r.checkout_id,
            r.source_message_id,
            r.created_at,
            f"invoice {r.invoice_id} {r.status}: {r.amount:.2f} {r.currency}",
        )
        for r in (await conn.execute(INVOICES, params)).all()
    ]
    effects += [
        EffectRow(
            "email",
            r.checkout_id,
            r.source_message_id,
            r.sent_at,
            f"confirmation e-mail sent to {mask_email(r.recipient)}",
        )
        for r in (await conn.execute(EMAILS, params)).all()
    ]
    effects += [
        EffectRow(
            "production",
            r.checkout_id,
            r.source_message_id,
            r.submitted_at,
            "sent to production"
            + (f" (reference {r.production_reference})" if r.production_reference else ""),
        )
        for r in (await conn.execute(PRODUCTION, params)).all()
    ]
    return effects


async def load_audit(conn: AsyncConnection, message_ids: Sequence[str]) -> list[AuditRow]:
    """The replays and purges that took any of `message_ids`, oldest first."""
    if not message_ids:
        return []
    rows = (await conn.execute(AUDIT, {"ids": list(message_ids)})).all()
    return [AuditRow(**r._asdict()) for r in rows]


# --------------------------------------------------------------------------- broker


def _header_text(value: Any) -> str | None:
    if value is None:
        return None
    return bytes(value).decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _header_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    text_value = _header_text(value)
    if not text_value:
        return None
    try:
        parsed = datetime.fromisoformat(text_value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def letter_row(letter: DeadLetter, queue: str, dlq: str) -> LetterRow:
    """What the timeline needs of a dead-lettered message (`operations.dlq.letters.DeadLetter`)."""
    headers = letter.headers
    replays = headers.get(REPLAY_COUNT)
    return LetterRow(
        queue=_header_text(headers.get(failures.ORIGINAL_QUEUE)) or queue,
        dlq=dlq,
        message_id=letter.message_id,
        correlation_id=letter.correlation_id,
        message_type=letter.message_type,
        attempts=letter.attempts,
        first_failure_at=_header_time(headers.get(failures.FIRST_FAILURE_AT)),
        last_failure_at=_header_time(headers.get(failures.LAST_FAILURE_AT)),
        error=letter.error,
        failure_kind=_header_text(headers.get(failures.FAILURE_KIND)),
        replay_count=replays if isinstance(replays, int) else 0,
    )


async def scan_dead_letters(
    connection: AbstractConnection,
    topology: Topology,
    checkout_ids: Sequence[uuid.UUID],
    message_ids: Sequence[str] = (),
    *,
    scan_limit: int = SCAN_LIMIT,
) -> BrokerScan:
    """The messages in any dead-letter queue whose correlation id is one of the
    checkouts (or whose id is one of `message_ids`); every message stays in place."""
    wanted = {str(c) for c in checkout_ids}
    known = set(message_ids)
    letters: list[LetterRow] = []
    scanned: dict[str, tuple[int, int]] = {}
    for queue in topology.queues.values():
        try:
            async with reading(connection, queue.dlq) as reader:
                count = 0
                async for message in reader.messages(scan_limit):
                    count += 1
                    letter = DeadLetter.of(message)
                    if letter.correlation_id in wanted or letter.message_id in known:
                        letters.append(letter_row(letter, queue.name, queue.dlq))
                scanned[queue.dlq] = (count, reader.depth)
        except QueueNotDeclared:
            scanned[queue.dlq] = (0, 0)
    return BrokerScan(read=True, letters=letters, scanned=scanned)


# --------------------------------------------------------------------------- together


async def trace(
    conn: AsyncConnection,
    target: uuid.UUID,
    *,
    rabbit: AbstractConnection | None = None,
    topology: Topology | None = None,
    broker_error: str | None = None,
    scan_limit: int = SCAN_LIMIT,
    now: datetime | None = None,
) -> Trace | None:
    """The timeline of an order (every checkout) or of one checkout; None if unknown.

    With `rabbit` (and `topology`) the dead-letter queues are read too; without it,
    `broker_error` may say why they could not be (shown in the trace).
    """
    sources = await load_sources(conn, target, now=now)
    if sources is None:
        return None
    if rabbit is not None and topology is not None and (sources.checkouts or sources.cancellations):
        ids = [c.checkout_id for c in (*sources.checkouts, *sources.cancellations)]
        try:
            sources.broker = await scan_dead_letters(
                rabbit, topology, ids, sorted(message_types(sources)), scan_limit=scan_limit
            )
        except (AMQPError, OSError) as exc:  # the trace goes on without the queues
            sources.broker = BrokerScan(read=False, error=f"reading failed: {exc!r}")
    elif broker_error is not None:
        sources.broker = BrokerScan(read=False, error=broker_error)
    sources.audit = await load_audit(conn, sorted(message_types(sources)))
    return build(sources)
