"""Rows a test needs to exist before it publishes a message about them.

The consumers and the payment step act only on what the database says was paid or
charged (`consumers.effects.ensure_paid`, `PaymentStep._check`), so a test that
publishes an `OrderPaid` by hand first writes the order, its PAID checkout and its
payment, as the saga would have.

Also: events put through the outbox and a relay (`through_outbox`, `publish_paid`), a
checkout made to look old (`aged`) and a charge parked in a dead-letter queue
(`park_charge`).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import aio_pika
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from checkout_api.usecases.checkout_order import checkout_order
from contracts import ChargePayment, Customer, OrderPaid
from contracts.envelope import Message
from infra.db.models import Checkout, Order, OutboxMessage, Payment
from infra.db.session import UnitOfWork
from infra.messaging import failures
from infra.messaging.outbox import add_to_outbox
from infra.messaging.relay import OutboxRelay


def _times(now: datetime) -> dict[str, datetime]:
    return {"created_at": now, "updated_at": now}


def _order(order_id: uuid.UUID, status: str, now: datetime, **fields: Any) -> Order:
    return Order(order_id=order_id, status=status, **_times(now), **fields)


async def paid_order(
    uow: UnitOfWork,
    *,
    name: str = "Seeded poster",
    amount: Decimal = Decimal("8.00"),
    currency: str = "USD",
    email: str = "seeded@example.com",
    customer_name: str = "Seeded",
) -> OrderPaid:
    """Write a PAID order, checkout and payment; return the OrderPaid the saga would send."""
    now = datetime.now(UTC)
    order_id, checkout_id, payment_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    async with uow() as session:
        session.add(
            _order(
                order_id,
                "PAID",
                now,
                order_name=name,
                amount=amount,
                currency=currency,
                customer_email=email,
                customer_name=customer_name,
            )
        )
        await session.flush()
        session.add(
            Checkout(checkout_id=checkout_id, order_id=order_id, state="PAID", **_times(now))
        )
        await session.flush()
        session.add(
            Payment(
                payment_id=payment_id,
                checkout_id=checkout_id,
                order_id=order_id,
                amount=amount,
                currency=currency,
                status="SUCCESSFUL",
                provider_payment_id="seeded",
                created_at=now,
                updated_at=now,
            )
        )
        await session.commit()
    return OrderPaid(
        order_id=order_id,
        checkout_id=checkout_id,
        payment_id=payment_id,
        order_name=name,
        amount=amount,
        currency=currency,
        customer=Customer(email=email, name=customer_name),
        paid_at=now,
    )


def order_paid_event(**changes: object) -> OrderPaid:
    """An OrderPaid about nothing in the database: for tests of publishing and routing,
    where no consumer acts on it (a consumer would dead-letter it: see `paid_order`)."""
    fields: dict[str, object] = {
        "order_id": uuid.uuid4(),
        "checkout_id": uuid.uuid4(),
        "payment_id": uuid.uuid4(),
        "order_name": "Poster",
        "amount": Decimal("19.99"),
        "currency": "USD",
        "customer": Customer(email="a@example.com", name="A"),
        "paid_at": datetime.now(UTC),
    }
    return OrderPaid.model_validate({**fields, **changes})


async def through_outbox(
    uow: UnitOfWork, relay: OutboxRelay, events: Sequence[Message], *, at: datetime | None = None
) -> list[str]:
    """Write `events` to the outbox (stamped `at`, default now) and let the relay publish
    them; their message ids."""
    async with uow() as session:
        rows = []
        for event in events:
            row = add_to_outbox(session, event, correlation_id=uuid.uuid4())
            if at is not None:
                row.created_at = at
            rows.append(row)
        await session.commit()
    await relay.drain()
    return [str(row.message_id) for row in rows]


async def publish_paid(uow: UnitOfWork, relay: OutboxRelay, count: int) -> list[tuple[str, str]]:
    """`count` OrderPaid (see `order_paid_event`) through the outbox and the relay;
    (message id, order id) each."""
    events = [order_paid_event() for _ in range(count)]
    sent = await through_outbox(uow, relay, events)
    return [(message_id, str(e.order_id)) for message_id, e in zip(sent, events, strict=True)]


async def pending_checkout(
    uow: UnitOfWork, amount: Decimal = Decimal("12.50"), *, payment_deadline: float = 120.0
) -> ChargePayment:
    """A PENDING order checked out by the API's own use case: its checkout PAYMENT_PENDING,
    its payment PENDING; return the ChargePayment its outbox row carries."""
    now = datetime.now(UTC)
    order_id = uuid.uuid4()
    async with uow() as session:
        session.add(
            _order(
                order_id,
                "PENDING",
                now,
                order_name="Seeded poster",
                amount=amount,
                currency="EUR",
                customer_email="seeded@example.com",
                customer_name="Seeded",
            )
        )
        await session.commit()
    outcome = await checkout_order(uow, order_id, payment_deadline=payment_deadline)
    async with uow() as session:
        body = await session.scalar(
            select(OutboxMessage.body).where(
                OutboxMessage.correlation_id == outcome.checkout_id,
                OutboxMessage.message_type == ChargePayment.message_type,
            )
        )
    assert body is not None, "the checkout wrote no ChargePayment"
    return ChargePayment.model_validate_json(body)


async def aged(engine: AsyncEngine, checkout_id: uuid.UUID, minutes: int) -> None:
    """Make the checkout look `minutes` old (as `checkout stuck` measures age)."""
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE checkouts SET created_at = now() - make_interval(mins => :m)"
                " WHERE checkout_id = :c"
            ),
            {"m": minutes, "c": checkout_id},
        )


async def park_charge(
    channel: aio_pika.abc.AbstractChannel, queue: str, charge: ChargePayment
) -> str:
    """Put a dead-lettered copy of the charge in `queue`'s dead-letter queue, as the
    consumer shell leaves one after a payment outage; its message id."""
    message_id = str(uuid.uuid4())
    await channel.default_exchange.publish(
        aio_pika.Message(
            charge.model_dump_json().encode(),
            message_id=message_id,
            correlation_id=str(charge.checkout_id),
            type="ChargePayment",
            headers={
                failures.ATTEMPTS: 4,
                failures.ERROR_TYPE: "TransientFailure",
                failures.ERROR_MESSAGE: "payment service answered 503: down",
                failures.ORIGINAL_QUEUE: queue,
            },
        ),
        routing_key=f"{queue}.dlq",
    )
    return message_id


async def outbox_count(engine: AsyncEngine, message_type: str, checkout_id: uuid.UUID) -> int:
    """How many `message_type` messages the outbox holds for the checkout (none is relayed
    in the tests that ask: no relay runs)."""
    async with engine.connect() as conn:
        found = await conn.execute(
            text("SELECT count(*) FROM outbox WHERE message_type = :t AND correlation_id = :c"),
            {"t": message_type, "c": checkout_id},
        )
        return int(found.scalar_one())
