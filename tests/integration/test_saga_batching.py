"""The saga applies the messages in hand together, one per checkout, and each still gets
exactly its own outcome: its transition, a duplicate skipped, or a refusal."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts import ChargePayment, CheckoutRequested
from infra.db.session import UnitOfWork
from infra.messaging.consumer import Delivery, Handled
from infra.messaging.failures import PermanentFailure
from saga.orchestrator import CheckoutSaga
from saga.payment_step import PaymentStep
from tests.support.batching import Counted
from tests.support.seed import started_checkout

pytestmark = pytest.mark.integration


def _delivery(message_id: uuid.UUID | None = None) -> Delivery:
    return Delivery(message_id or uuid.uuid4(), None, CheckoutRequested.message_type, 1, "saga")


async def _states(engine: AsyncEngine, ids: list[uuid.UUID]) -> dict[str, int]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT state, count(*) FROM checkouts WHERE checkout_id = ANY(:ids) GROUP BY 1"),
            {"ids": ids},
        )
        return {state: n for state, n in rows.all()}


async def _charges(engine: AsyncEngine, ids: list[uuid.UUID]) -> int:
    async with engine.connect() as conn:
        found = await conn.execute(
            text(
                "SELECT count(*) FROM outbox WHERE message_type = 'ChargePayment'"
                " AND correlation_id = ANY(:ids)"
            ),
            {"ids": ids},
        )
        return int(found.scalar_one())


async def test_checkouts_requested_together_move_on_together(
    hot_uow: UnitOfWork, engine: AsyncEngine
) -> None:
    requests = [await started_checkout(hot_uow) for _ in range(12)]
    saga = CheckoutSaga(hot_uow)
    counted = Counted(saga._batcher)

    outcomes = await asyncio.gather(*(saga.handle(r, _delivery()) for r in requests))

    assert outcomes == [Handled.DONE] * 12
    assert counted.sizes, "no batch ran: each message had a transaction of its own"
    assert max(counted.sizes) > 1
    ids = [r.checkout_id for r in requests]
    assert await _states(engine, ids) == {"PAYMENT_PENDING": 12}
    assert await _charges(engine, ids) == 12  # one ChargePayment each, no more


async def test_a_batch_keeps_each_outcome_its_own(hot_uow: UnitOfWork, engine: AsyncEngine) -> None:
    requests = [await started_checkout(hot_uow) for _ in range(3)]
    nowhere = CheckoutRequested(
        checkout_id=uuid.uuid4(), order_id=uuid.uuid4(), requested_at=datetime.now(UTC)
    )
    nowhere_delivery, twice = _delivery(), _delivery()
    saga = CheckoutSaga(hot_uow)

    outcomes = await asyncio.gather(
        *(saga.handle(r, _delivery()) for r in requests[:2]),
        saga.handle(nowhere, nowhere_delivery),
        saga.handle(requests[2], twice),
        saga.handle(requests[2], twice),  # the same message delivered twice
        return_exceptions=True,
    )

    assert outcomes[:2] == [Handled.DONE] * 2
    assert isinstance(outcomes[2], PermanentFailure)
    assert str(nowhere.checkout_id) in str(outcomes[2])
    assert sorted(map(str, outcomes[3:])) == sorted(map(str, [Handled.DONE, Handled.DUPLICATE]))
    ids = [r.checkout_id for r in requests]
    assert await _states(engine, ids) == {"PAYMENT_PENDING": 3}
    assert await _charges(engine, ids) == 3
    async with engine.connect() as conn:  # the refused message left no inbox row
        claimed = await conn.execute(
            text("SELECT count(*) FROM inbox WHERE message_id = :m"),
            {"m": nowhere_delivery.message_id},
        )
        assert claimed.scalar_one() == 0


async def test_payment_checks_in_hand_share_a_read_and_keep_their_verdicts(
    hot_uow: UnitOfWork, engine: AsyncEngine
) -> None:
    requests = [await started_checkout(hot_uow) for _ in range(4)]
    await asyncio.gather(*(CheckoutSaga(hot_uow).handle(r, _delivery()) for r in requests))
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT payment_id, checkout_id, order_id, amount, currency FROM payments"
                " WHERE checkout_id = ANY(:ids)"
            ),
            {"ids": [r.checkout_id for r in requests]},
        )
        commands = [
            ChargePayment(payment_id=p, checkout_id=c, order_id=o, amount=amount, currency=currency)
            for p, c, o, amount, currency in rows.all()
        ]
    forged = [
        commands[0].model_copy(update={"amount": Decimal("0.01")}),  # not what was recorded
        commands[1].model_copy(update={"checkout_id": uuid.uuid4()}),  # another checkout's
        commands[2].model_copy(update={"payment_id": uuid.uuid4()}),  # never recorded
    ]
    step = PaymentStep(hot_uow, None, None, "unused")  # type: ignore[arg-type]
    counted = Counted(step._recorded)

    verdicts = await asyncio.gather(
        *(step._check(c) for c in [*commands, *forged]), return_exceptions=True
    )

    assert verdicts[:4] == [None] * 4
    assert all(isinstance(v, PermanentFailure) for v in verdicts[4:]), verdicts
    assert "does not match" in str(verdicts[4])
    assert "not charging a payment this system did not record" in str(verdicts[5])
    assert "not charging a payment this system did not record" in str(verdicts[6])
    assert counted.sizes, "each check had a read of its own"
