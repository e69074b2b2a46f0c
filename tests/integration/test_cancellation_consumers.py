"""The consumers' side of a cancellation, against the real PostgreSQL and RabbitMQ.

The cancellation saga is not part of this test: each test writes what its final
transition commits (the order CANCELLED) and publishes the `OrderCancelled` it would,
then watches the invoice and e-mail consumers act on it, in any order with `OrderPaid`,
and the production consumer meet an order cancelled before it reached production.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from consumers.invoice import InvoiceConsumer
from consumers.production import CANCELLED_MEANWHILE
from contracts import CancellationRefund, OrderCancelled, OrderPaid
from infra.db.models import CancellationEmail, Invoice, ProductionSubmission
from infra.db.session import UnitOfWork
from infra.messaging.consumer import Delivery, Handled
from infra.messaging.publisher import Outgoing
from infra.messaging.topology import Topology
from tests.support.amqp import depth
from tests.support.pipeline import Pipeline
from tests.support.polling import eventually
from tests.support.seed import paid_order

pytestmark = pytest.mark.integration


async def _cancel_order(p: Pipeline, order_id: uuid.UUID) -> None:
    """What the cancellation's final transition commits about the order."""
    async with p.engine.begin() as conn:
        await conn.execute(
            text("UPDATE orders SET status = 'CANCELLED', updated_at = now() WHERE order_id = :o"),
            {"o": order_id},
        )


def _cancelled(paid: OrderPaid, *, refunded: bool = True) -> OrderCancelled:
    refund = (
        CancellationRefund(refund_id=uuid.uuid4(), amount=paid.amount, currency=paid.currency)
        if refunded
        else None
    )
    return OrderCancelled(
        order_id=paid.order_id,
        cancellation_id=uuid.uuid4(),
        reason="changed my mind",
        refund=refund,
        cancelled_at=datetime.now(UTC),
    )


async def _publish(
    p: Pipeline,
    topology: Topology,
    event: OrderPaid | OrderCancelled,
    copies: int = 1,
    *,
    message_id: uuid.UUID | None = None,
) -> uuid.UUID:
    """Publish `event` (`copies` times) with a new message id, or `message_id` for a
    redelivery of an earlier one; the id."""
    message_id = message_id or uuid.uuid4()
    outgoing = Outgoing.of(
        event,
        exchange=topology.orders_exchange,
        message_id=message_id,
        correlation_id=event.correlation_id(),
    )
    for _ in range(copies):
        await p.publisher.publish(outgoing)
    return message_id


async def _invoice_status(p: Pipeline, order_id: uuid.UUID) -> str | None:
    async with p.engine.connect() as conn:
        found = await conn.execute(
            text("SELECT status FROM invoices WHERE order_id = :o"), {"o": order_id}
        )
        return found.scalar_one_or_none()


async def _lines(p: Pipeline, saga_id: uuid.UUID, source: str) -> list[tuple[str, str]]:
    async with p.engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT kind, detail FROM checkout_events"
                " WHERE checkout_id = :s AND source = :src ORDER BY id"
            ),
            {"s": saga_id, "src": source},
        )
        return [(kind, detail) for kind, detail in rows.all()]


async def _two_lines(p: Pipeline, saga_id: uuid.UUID, source: str) -> list[tuple[str, str]]:
    async def probe() -> list[tuple[str, str]]:
        return await _lines(p, saga_id, source)

    return await eventually(probe, until=lambda lines: len(lines) == 2, what=f"{source}'s lines")


async def _inboxed(p: Pipeline, consumer: str, message_id: uuid.UUID) -> bool:
    async with p.engine.connect() as conn:
        found = await conn.execute(
            text("SELECT 1 FROM inbox WHERE consumer = :c AND message_id = :m"),
            {"c": consumer, "m": message_id},
        )
        return found.scalar_one_or_none() is not None


async def _emails_to(p: Pipeline, address: str) -> list[dict[str, Any]]:
    entries = (await p.mocks.get("/mock/emails", params={"include": "status_code"})).json()
    return [e for e in entries if e["request"].get("to") == address]


def _address() -> str:
    return f"jane.{uuid.uuid4().hex[:8]}@example.com"


async def test_a_paid_order_cancelled_with_a_refund_voids_its_invoice_and_tells_the_customer(
    pipeline: Pipeline, topology: Topology
) -> None:
    email = _address()
    paid = await paid_order(UnitOfWork(pipeline.engine), amount=Decimal("19.90"), email=email)
    await _publish(pipeline, topology, paid)
    await eventually(
        lambda: _invoice_status(pipeline, paid.order_id), until=lambda s: s == "CREATED"
    )

    await _cancel_order(pipeline, paid.order_id)
    cancelled = _cancelled(paid)
    # Twice with one message id: what a relay crash between publish and delete produces.
    message_id = await _publish(pipeline, topology, cancelled, copies=2)

    await eventually(
        lambda: _invoice_status(pipeline, paid.order_id), until=lambda s: s == "VOIDED"
    )
    await eventually(
        lambda: pipeline.rows(CancellationEmail, str(paid.order_id)), until=lambda n: n == 1
    )
    notices = await eventually(
        lambda: _emails_to(pipeline, email), until=lambda e: len(e) == 2, what="two e-mails"
    )
    notice = notices[1]
    assert notice["idempotency_key"] == str(message_id)
    assert notice["request"]["subject"] == "Order cancelled: Seeded poster"
    assert "refunded 19.90 USD" in notice["request"]["body"]
    assert notice["attempts"] <= 2  # two copies at once may both call; one key, one e-mail
    async with pipeline.engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT refund_amount, refund_currency, recipient, source_message_id"
                    " FROM cancellation_emails WHERE cancellation_id = :c"
                ),
                {"c": cancelled.cancellation_id},
            )
        ).one()
    assert tuple(row) == (Decimal("19.90"), "USD", email, message_id)
    # Each consumer's lines in the cancellation's timeline: applied once, then the copy
    # skipped as a duplicate.
    for source, applied in (("invoice", "voided"), ("email", "refund 19.90 USD)")):
        details = dict(await _two_lines(pipeline, cancelled.cancellation_id, source))
        assert set(details) == {"effect.applied", "duplicate.skipped"}
        assert details["effect.applied"].endswith(applied), details
    assert await pipeline.rows(Invoice, str(paid.order_id)) == 1


async def test_an_order_cancelled_without_a_charge_gets_an_email_saying_so(
    pipeline: Pipeline, topology: Topology
) -> None:
    email = _address()
    paid = await paid_order(UnitOfWork(pipeline.engine), email=email)
    await _cancel_order(pipeline, paid.order_id)
    cancelled = _cancelled(paid, refunded=False)

    await _publish(pipeline, topology, cancelled)

    [notice] = await eventually(lambda: _emails_to(pipeline, email), until=lambda e: len(e) == 1)
    assert "Nothing was charged." in notice["request"]["body"]
    await eventually(
        lambda: pipeline.rows(CancellationEmail, str(paid.order_id)), until=lambda n: n == 1
    )
    async with pipeline.engine.connect() as conn:
        refund = (
            await conn.execute(
                text("SELECT refund_amount FROM cancellation_emails WHERE cancellation_id = :c"),
                {"c": cancelled.cancellation_id},
            )
        ).scalar_one()
    assert refund is None


async def test_a_cancellation_before_the_invoice_leaves_the_invoice_voided_when_it_comes(
    pipeline: Pipeline, topology: Topology
) -> None:
    paid = await paid_order(UnitOfWork(pipeline.engine), email=_address())
    await _cancel_order(pipeline, paid.order_id)
    cancelled = _cancelled(paid)
    cancel_id = await _publish(pipeline, topology, cancelled)
    await eventually(lambda: _inboxed(pipeline, "invoice", cancel_id), what="cancellation applied")
    assert await _invoice_status(pipeline, paid.order_id) is None
    [(_, detail)] = await _lines(pipeline, cancelled.cancellation_id, "invoice")
    assert detail.startswith("no invoice yet")

    # The OrderPaid arrives late (redelivered, or replayed from a dead-letter queue).
    await _publish(pipeline, topology, paid)

    status = await eventually(lambda: _invoice_status(pipeline, paid.order_id))
    assert status == "VOIDED"


async def test_an_order_cancelled_about_an_order_that_is_not_cancelled_is_dead_lettered(
    pipeline: Pipeline, topology: Topology, channel: Any
) -> None:
    email = _address()
    paid = await paid_order(UnitOfWork(pipeline.engine), email=email)
    await _publish(pipeline, topology, paid)
    await eventually(
        lambda: _invoice_status(pipeline, paid.order_id), until=lambda s: s == "CREATED"
    )
    dlqs = [topology.queues[k].dlq for k in ("invoice", "email")]
    before = [await depth(channel, q) for q in dlqs]
    try:
        forged = _cancelled(paid)
        message_id = await _publish(pipeline, topology, forged)  # the order is still PAID

        async def dead() -> list[int]:
            return [await depth(channel, q) - b for q, b in zip(dlqs, before, strict=True)]

        await eventually(dead, until=lambda d: d == [1, 1], what="dead-lettered by both")
        assert await _invoice_status(pipeline, paid.order_id) == "CREATED"
        assert len(await _emails_to(pipeline, email)) == 1  # the confirmation only
        assert not await _inboxed(pipeline, "invoice", message_id)
    finally:  # leave the dead-letter queues as the other tests expect them
        for queue in dlqs:
            await (await channel.get_queue(queue)).purge()


async def test_an_order_cancelled_before_production_saw_it_is_cancelled_meanwhile(
    pipeline: Pipeline, topology: Topology, channel: Any
) -> None:
    paid = await paid_order(UnitOfWork(pipeline.engine), email=_address())
    # The cancellation reached the Production Service first.
    cancelled = await pipeline.mocks.post(
        f"/production/orders/{paid.order_id}/cancel", json={}, headers={"Idempotency-Key": "c"}
    )
    assert cancelled.status_code == 200
    dlq = topology.queues["production"].dlq
    before = await depth(channel, dlq)

    message_id = await _publish(pipeline, topology, paid)

    [(kind, detail)] = await eventually(
        lambda: _lines(pipeline, paid.checkout_id, "production"), until=bool
    )
    assert kind == CANCELLED_MEANWHILE
    assert detail.startswith("cancelled meanwhile")
    assert await _inboxed(pipeline, "production", message_id)
    assert await pipeline.rows(ProductionSubmission, str(paid.order_id)) == 0
    assert await depth(channel, dlq) == before
    [refused] = await pipeline.effects("/mock/production/orders", str(paid.order_id))
    assert (refused["status_code"], refused["attempts"]) == (409, 1)

    # A redelivery is a duplicate like any other: no second call.
    await _publish(pipeline, topology, paid, message_id=message_id)
    await eventually(
        lambda: _lines(pipeline, paid.checkout_id, "production"),
        until=lambda lines: len(lines) == 2,
        what="the duplicate's line",
    )
    [refused] = await pipeline.effects("/mock/production/orders", str(paid.order_id))
    assert refused["attempts"] == 1


async def _waiting_on_a_lock(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        found = await conn.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                " AND query LIKE '%INSERT INTO invoices%'"
            )
        )
        return int(found.scalar_one())


async def test_an_invoice_written_while_its_order_is_being_cancelled_ends_voided(
    hot_uow: UnitOfWork, engine: AsyncEngine
) -> None:
    """The one interleaving the share lock exists for: the invoice's statement runs while
    the cancellation's transaction has changed the order but not committed. Without the
    lock it would read the committed PAID and leave a CREATED invoice, and the
    `OrderCancelled` (processed after that commit, before the invoice's) would find
    nothing to void."""
    paid = await paid_order(hot_uow)
    consumer = InvoiceConsumer(hot_uow)
    delivery = Delivery(uuid.uuid4(), paid.checkout_id, "OrderPaid", 1, "test.invoice")
    async with engine.connect() as cancelling:
        transaction = await cancelling.begin()
        await cancelling.execute(
            text("UPDATE orders SET status = 'CANCELLED' WHERE order_id = :o"),
            {"o": paid.order_id},
        )
        invoicing = asyncio.create_task(consumer.handle(paid, delivery))
        await eventually(lambda: _waiting_on_a_lock(engine), until=lambda n: n == 1)
        assert not invoicing.done()
        await transaction.commit()
    assert await invoicing == Handled.DONE
    async with engine.connect() as conn:
        status = await conn.execute(
            text("SELECT status FROM invoices WHERE order_id = :o"), {"o": paid.order_id}
        )
        assert status.scalar_one() == "VOIDED"
