"""The migrated schema holds the invariants the code relies on."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from infra.db.models import Base, Checkout, Order
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


async def test_the_models_mirror_the_migrated_schema(engine: AsyncEngine) -> None:
    """`infra.db.models` says the models mirror the migrations: alembic's autogenerate
    finds nothing between them (a table, column, index or constraint missing on one side)."""

    def differences(conn: Connection) -> list[Any]:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))

    async with engine.connect() as conn:
        found = await conn.run_sync(differences)
    assert found == [], "\n".join(map(str, found))
