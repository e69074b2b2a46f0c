"""Messages in hand at once share their statements (`consumers.effects`), and each still
gets exactly its own outcome: applied once, skipped as a duplicate, or refused."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from consumers.invoice import InvoiceConsumer
from contracts import OrderPaid
from infra.db.session import UnitOfWork
from infra.messaging.consumer import Delivery, Handled
from infra.messaging.failures import PermanentFailure
from tests.support.batching import Counted
from tests.support.seed import order_paid_event, paid_order

pytestmark = pytest.mark.integration


def _delivery(message_id: uuid.UUID | None = None) -> Delivery:
    return Delivery(message_id or uuid.uuid4(), None, OrderPaid.message_type, 1, "test.invoice")


async def _count(engine: AsyncEngine, sql: str, ids: list[uuid.UUID]) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text(sql), {"ids": ids})).scalar_one())


async def test_twenty_messages_in_hand_are_recorded_in_a_few_statements(
    hot_uow: UnitOfWork, engine: AsyncEngine
) -> None:
    events = [await paid_order(hot_uow) for _ in range(20)]
    consumer = InvoiceConsumer(hot_uow)
    counted = Counted(consumer._effects._records)

    outcomes = await asyncio.gather(*(consumer.handle(e, _delivery()) for e in events))

    assert outcomes == [Handled.DONE] * 20
    assert counted.sizes, "no batch ran: each message had a statement of its own"
    assert max(counted.sizes) > 1
    orders = [e.order_id for e in events]
    assert (
        await _count(engine, "SELECT count(*) FROM invoices WHERE order_id = ANY(:ids)", orders)
        == 20
    )
    lines = (
        "SELECT count(*) FROM checkout_events"
        " WHERE kind = 'effect.applied' AND order_id = ANY(:ids)"
    )
    assert await _count(engine, lines, orders) == 20


async def test_a_batch_keeps_each_outcome_its_own(hot_uow: UnitOfWork, engine: AsyncEngine) -> None:
    good = [await paid_order(hot_uow) for _ in range(4)]
    forged = order_paid_event()  # about no checkout of this system
    twice = _delivery()
    consumer = InvoiceConsumer(hot_uow)

    outcomes = await asyncio.gather(
        *(consumer.handle(e, _delivery()) for e in good[:3]),
        consumer.handle(forged, _delivery()),
        consumer.handle(good[3], twice),
        consumer.handle(good[3], twice),  # a second delivery of the same message
        return_exceptions=True,
    )

    assert outcomes[:3] == [Handled.DONE] * 3
    assert isinstance(outcomes[3], PermanentFailure)
    assert "does not have" in str(outcomes[3])
    assert sorted(map(str, outcomes[4:])) == sorted(map(str, [Handled.DONE, Handled.DUPLICATE]))
    orders = [e.order_id for e in good]
    assert (
        await _count(engine, "SELECT count(*) FROM invoices WHERE order_id = ANY(:ids)", orders)
        == 4
    )
    forged_rows = "SELECT count(*) FROM inbox WHERE message_id = ANY(:ids)"
    assert await _count(engine, forged_rows, [forged.order_id]) == 0
    assert (
        await _count(
            engine, "SELECT count(*) FROM invoices WHERE order_id = ANY(:ids)", [forged.order_id]
        )
        == 0
    )


async def test_a_failing_batch_is_run_message_by_message(
    hot_uow: UnitOfWork, engine: AsyncEngine
) -> None:
    events = [await paid_order(hot_uow) for _ in range(3)]
    consumer = InvoiceConsumer(hot_uow)
    records = consumer._effects._records
    real = records._run_batch

    failed: list[int] = []

    async def broken(items: Sequence[Any]) -> Any:
        if len(items) > 1:  # a batch fails; each message alone (a batch of one) does not
            failed.append(len(items))
            raise ConnectionError("lost the connection mid-batch")
        return await real(items)

    records._run_batch = broken
    outcomes = await asyncio.gather(*(consumer.handle(e, _delivery()) for e in events))
    records._run_batch = real

    assert failed, "no batch was formed, so none could fail"
    assert outcomes == [Handled.DONE] * 3
    orders = [e.order_id for e in events]
    assert (
        await _count(engine, "SELECT count(*) FROM invoices WHERE order_id = ANY(:ids)", orders)
        == 3
    )
