"""The saga applies the outcomes in hand together, one per checkout, and each still gets
exactly its own result: its transition, a duplicate skipped, or a refusal."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from infra.db.session import UnitOfWork
from infra.messaging.failures import PermanentFailure
from saga.inputs import PaymentDeclined, PaymentSucceeded
from saga.orchestrator import Applied, CheckoutSaga
from saga.payment_step import PaymentStep, Recorded, reply_id
from tests.support.batching import Counted
from tests.support.seed import pending_checkout

pytestmark = pytest.mark.integration


async def _states(engine: AsyncEngine, ids: list[uuid.UUID]) -> dict[str, int]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT state, count(*) FROM checkouts WHERE checkout_id = ANY(:ids) GROUP BY 1"),
            {"ids": ids},
        )
        return {state: n for state, n in rows.all()}


async def _messages(engine: AsyncEngine, ids: list[uuid.UUID], message_type: str) -> int:
    async with engine.connect() as conn:
        found = await conn.execute(
            text(
                "SELECT count(*) FROM outbox WHERE message_type = :t AND correlation_id = ANY(:ids)"
            ),
            {"ids": ids, "t": message_type},
        )
        return int(found.scalar_one())


async def test_outcomes_in_hand_are_applied_together(
    hot_uow: UnitOfWork, engine: AsyncEngine
) -> None:
    charges = [await pending_checkout(hot_uow) for _ in range(12)]
    saga = CheckoutSaga(hot_uow)
    counted = Counted(saga._batcher)

    applied = await asyncio.gather(
        *(
            saga.apply(PaymentSucceeded(c.checkout_id, f"p-{n}"), uuid.uuid4())
            for n, c in enumerate(charges)
        )
    )

    assert all(a.transition is not None and a.transition.changed for a in applied)
    assert counted.sizes, "no batch ran: each outcome had a transaction of its own"
    assert max(counted.sizes) > 1
    ids = [c.checkout_id for c in charges]
    assert await _states(engine, ids) == {"PAID": 12}
    assert await _messages(engine, ids, "OrderPaid") == 12  # one each, no more


async def test_a_batch_keeps_each_outcome_its_own(hot_uow: UnitOfWork, engine: AsyncEngine) -> None:
    charges = [await pending_checkout(hot_uow) for _ in range(3)]
    nowhere, nowhere_id, twice = (
        PaymentDeclined(uuid.uuid4(), "card_declined"),
        uuid.uuid4(),
        uuid.uuid4(),
    )
    saga = CheckoutSaga(hot_uow)

    outcomes = await asyncio.gather(
        *(
            saga.apply(PaymentDeclined(c.checkout_id, "card_declined"), uuid.uuid4())
            for c in charges[:2]
        ),
        saga.apply(nowhere, nowhere_id),
        saga.apply(PaymentSucceeded(charges[2].checkout_id, "p-1"), twice),
        saga.apply(PaymentSucceeded(charges[2].checkout_id, "p-1"), twice),  # one id twice
        return_exceptions=True,
    )

    assert all(isinstance(o, Applied) and o.transition for o in outcomes[:2])
    assert isinstance(outcomes[2], PermanentFailure)
    assert str(nowhere.checkout_id) in str(outcomes[2])
    twins = [o.transition is None for o in outcomes[3:] if isinstance(o, Applied)]
    assert sorted(twins) == [False, True]  # applied once, skipped once
    ids = [c.checkout_id for c in charges]
    assert await _states(engine, ids) == {"FAILED": 2, "PAID": 1}
    assert await _messages(engine, ids, "OrderPaymentFailed") == 2
    assert await _messages(engine, ids, "OrderPaid") == 1
    async with engine.connect() as conn:  # the refused input left no inbox row
        claimed = await conn.execute(
            text("SELECT count(*) FROM inbox WHERE message_id = :m"), {"m": nowhere_id}
        )
        assert claimed.scalar_one() == 0


async def test_payment_checks_in_hand_share_a_read_and_keep_their_verdicts(
    hot_uow: UnitOfWork,
) -> None:
    commands = [await pending_checkout(hot_uow) for _ in range(5)]
    forged = [
        commands[0].model_copy(update={"amount": Decimal("0.01")}),  # not what was recorded
        commands[1].model_copy(update={"checkout_id": uuid.uuid4()}),  # another checkout's
        commands[2].model_copy(update={"payment_id": uuid.uuid4()}),  # never recorded
    ]
    applied_before = reply_id(uuid.uuid4())
    await CheckoutSaga(hot_uow).apply(
        PaymentSucceeded(commands[4].checkout_id, "p-1"), applied_before
    )
    step = PaymentStep(hot_uow, None, CheckoutSaga(hot_uow))  # type: ignore[arg-type]
    counted = Counted(step._recorded)

    verdicts = await asyncio.gather(
        *(step._check(c, reply_id(uuid.uuid4())) for c in [*commands[:4], *forged]),
        step._check(commands[4], applied_before),
        return_exceptions=True,
    )

    recorded = [v for v in verdicts if isinstance(v, Recorded)]
    assert [v.applied for v in verdicts[:4] if isinstance(v, Recorded)] == [False] * 4
    assert {v.state for v in recorded[:4]} == {"PAYMENT_PENDING"}  # recorded, pending: charge
    assert all(isinstance(v, PermanentFailure) for v in verdicts[4:7]), verdicts
    assert "does not match" in str(verdicts[4])
    assert "not charging a payment this system did not record" in str(verdicts[5])
    assert "not charging a payment this system did not record" in str(verdicts[6])
    assert isinstance(verdicts[7], Recorded)
    assert verdicts[7].applied  # its outcome is applied: a redelivery calls nothing
    assert counted.sizes, "each check had a read of its own"
