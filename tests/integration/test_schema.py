"""The migrated schema holds the invariants the code relies on."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from infra.db.models import Checkout, Order
from infra.db.session import UnitOfWork

pytestmark = pytest.mark.integration


def _order() -> Order:
    now = datetime.now(UTC)
    return Order(
        order_id=uuid.uuid4(),
        order_name="Poster",
        amount=Decimal("10.00"),
        currency="USD",
        customer_email="a@example.com",
        customer_name="A",
        status="PENDING",
        created_at=now,
        updated_at=now,
    )


def _checkout(order_id: uuid.UUID, state: str) -> Checkout:
    now = datetime.now(UTC)
    return Checkout(
        checkout_id=uuid.uuid4(), order_id=order_id, state=state, created_at=now, updated_at=now
    )


async def test_second_active_checkout_is_refused_by_the_database(uow: UnitOfWork) -> None:
    order = _order()
    async with uow() as session:
        session.add(order)
        await session.flush()
        session.add(_checkout(order.order_id, "STARTED"))
        await session.commit()
    with pytest.raises(IntegrityError):
        async with uow() as session:
            session.add(_checkout(order.order_id, "PAYMENT_PENDING"))
            await session.commit()


async def test_finished_checkouts_do_not_block_a_new_one(uow: UnitOfWork) -> None:
    order = _order()
    async with uow() as session:
        session.add(order)
        await session.flush()
        session.add_all(
            [
                _checkout(order.order_id, "FAILED"),
                _checkout(order.order_id, "FAILED"),
                _checkout(order.order_id, "STARTED"),
            ]
        )
        await session.commit()


async def test_name_search_uses_the_trigram_index(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        await conn.execute(text("SET enable_seqscan = off"))
        plan = (
            (
                await conn.execute(
                    text("EXPLAIN SELECT * FROM orders WHERE order_name ILIKE '%poster%'")
                )
            )
            .scalars()
            .all()
        )
    assert any("orders_name_trgm_idx" in line for line in plan), plan


async def test_uncommitted_unit_of_work_rolls_back(uow: UnitOfWork, engine: AsyncEngine) -> None:
    order = _order()
    async with uow() as session:
        session.add(order)
        await session.flush()
    async with engine.connect() as conn:
        found = (
            await conn.execute(
                text("SELECT count(*) FROM orders WHERE order_id = :id"), {"id": order.order_id}
            )
        ).scalar_one()
    assert found == 0
