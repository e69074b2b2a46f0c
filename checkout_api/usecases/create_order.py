"""Create an order (status PENDING)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import structlog

from checkout_api.schemas.orders import CreateOrder, Customer, OrderOut
from checkout_api.usecases.sql import INSERT_ORDER
from infra.db.session import UnitOfWork
from infra.logging import mask_email

log = structlog.get_logger(__name__)


async def create_order(uow: UnitOfWork, command: CreateOrder) -> OrderOut:
    """Insert the order and return its representation (no payment, no invoice yet)."""
    now = datetime.now(UTC)
    order = OrderOut(
        order_id=uuid.uuid4(),
        order_name=command.order_name,
        amount=command.amount,
        currency=command.currency,
        customer=Customer(email=command.customer.email, name=command.customer.name),
        status="PENDING",
        created_at=now,
        updated_at=now,
        payment=None,
        invoice=None,
    )
    async with uow() as session:
        conn = await session.connection()
        await conn.execute(
            INSERT_ORDER,
            {
                "order_id": order.order_id,
                "order_name": order.order_name,
                "amount": order.amount,
                "currency": order.currency,
                "customer_email": order.customer.email,
                "customer_name": order.customer.name,
                "status": order.status,
                "created_at": now,
                "updated_at": now,
            },
        )
        await session.commit()
    log.info(
        "order created",
        order_id=str(order.order_id),
        amount=f"{order.amount:.2f}",
        currency=order.currency,
        customer=mask_email(order.customer.email),
    )
    return order
