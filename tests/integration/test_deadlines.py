"""The deadlines table: set with the checkout, cancelled by its end, fired once by any
number of claimers, and fired again after a crash between the claim and the commit."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from infra.db.session import UnitOfWork
from infra.db.statements import Statement
from saga.inputs import PaymentSucceeded
from saga.orchestrator import CheckoutSaga
from saga.state_machine import Transition
from tests.support.polling import eventually
from tests.support.seed import pending_checkout

pytestmark = pytest.mark.integration

DUE_AT_ONCE = 0.001  # seconds: due as soon as it is written


async def _deadlines(engine: AsyncEngine, checkout_id: uuid.UUID) -> list[Any]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT kind, due_at, attempts FROM deadlines WHERE saga_id = :c"),
            {"c": checkout_id},
        )
        return list(rows.all())


async def _count(engine: AsyncEngine, sql: str, ids: list[uuid.UUID]) -> dict[uuid.UUID, int]:
    async with engine.connect() as conn:
        rows = await conn.execute(text(sql), {"ids": ids})
        return {row[0]: int(row[1]) for row in rows.all()}


async def _fired(engine: AsyncEngine, ids: list[uuid.UUID]) -> dict[uuid.UUID, int]:
    return await _count(
        engine,
        "SELECT checkout_id, count(*) FROM checkout_steps WHERE name = 'deadline.fired'"
        " AND checkout_id = ANY(:ids) GROUP BY 1",
        ids,
    )


async def _reconciles(engine: AsyncEngine, ids: list[uuid.UUID]) -> dict[uuid.UUID, int]:
    return await _count(
        engine,
        "SELECT correlation_id, count(*) FROM outbox WHERE message_type = 'ReconcilePayment'"
        " AND correlation_id = ANY(:ids) GROUP BY 1",
        ids,
    )


async def _timeline(engine: AsyncEngine, checkout_id: uuid.UUID) -> list[str]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT kind FROM checkout_events WHERE checkout_id = :c ORDER BY id"),
            {"c": checkout_id},
        )
        return [kind for (kind,) in rows.all()]


async def _due(engine: AsyncEngine, ids: list[uuid.UUID]) -> bool:
    async with engine.connect() as conn:
        found = await conn.execute(
            text("SELECT count(*) FROM deadlines WHERE saga_id = ANY(:ids) AND due_at <= now()"),
            {"ids": ids},
        )
        return int(found.scalar_one()) == len(ids)


async def test_a_checkout_sets_its_payment_deadline(
    hot_uow: UnitOfWork, engine: AsyncEngine
) -> None:
    before = datetime.now(UTC)
    charge = await pending_checkout(hot_uow, payment_deadline=90)
    [(kind, due_at, attempts)] = await _deadlines(engine, charge.checkout_id)
    assert (kind, attempts) == ("payment", 0)
    assert before + timedelta(seconds=90) <= due_at <= datetime.now(UTC) + timedelta(seconds=90)
    assert await _timeline(engine, charge.checkout_id) == ["deadline.set"]


async def test_the_outcome_cancels_the_deadline(hot_uow: UnitOfWork, engine: AsyncEngine) -> None:
    charge = await pending_checkout(hot_uow)
    await CheckoutSaga(hot_uow).apply(PaymentSucceeded(charge.checkout_id, "p-1"), uuid.uuid4())
    assert await _deadlines(engine, charge.checkout_id) == []
    assert await _timeline(engine, charge.checkout_id) == ["deadline.set", "deadline.cancelled"]


async def test_two_claimers_fire_each_due_deadline_once(
    hot_uow: UnitOfWork, engine: AsyncEngine
) -> None:
    charges = [await pending_checkout(hot_uow, payment_deadline=DUE_AT_ONCE) for _ in range(8)]
    ids = [c.checkout_id for c in charges]
    await eventually(lambda: _due(engine, ids), until=bool, what="the deadlines due")
    first, second = CheckoutSaga(hot_uow), CheckoutSaga(hot_uow)

    fired = await asyncio.gather(*(saga.fire_due(3) for saga in (first, second, first, second)))

    ours = [a for batch in fired for a in batch if a.checkout_id in ids]
    assert len(ours) == len({a.checkout_id for a in ours})  # none fired twice

    async def fire_a_round() -> dict[uuid.UUID, int]:  # the rest, a round at a time
        await first.fire_due()
        return await _fired(engine, ids)

    await eventually(fire_a_round, until=lambda f: len(f) == len(ids), what="each one fired")
    assert await _fired(engine, ids) == dict.fromkeys(ids, 1)
    assert await _reconciles(engine, ids) == dict.fromkeys(ids, 1)
    for checkout_id in ids:
        [(kind, due_at, attempts)] = await _deadlines(engine, checkout_id)
        assert (kind, attempts) == ("payment", 1)  # set again, with its backoff
        assert due_at > datetime.now(UTC)


class CrashingBeforeTheCommit(CheckoutSaga):
    """Dies after claiming the due rows, before anything is written or committed."""

    def _writes(
        self, transition: Transition, checkout: Any, now: datetime, *, fired: int = 0
    ) -> list[Statement]:
        raise ConnectionError("killed between the claim and the commit")


async def test_a_crash_between_claim_and_commit_fires_the_deadline_later(
    hot_uow: UnitOfWork, engine: AsyncEngine
) -> None:
    charge = await pending_checkout(hot_uow, payment_deadline=DUE_AT_ONCE)
    ids = [charge.checkout_id]
    await eventually(lambda: _due(engine, ids), until=bool, what="the deadline due")

    with pytest.raises(ConnectionError):
        await CrashingBeforeTheCommit(hot_uow).fire_due()
    [(_, _, attempts)] = await _deadlines(engine, charge.checkout_id)
    assert attempts == 0  # still there, still due: nothing was fired
    assert await _fired(engine, ids) == {}

    await CheckoutSaga(hot_uow).fire_due()
    assert await _fired(engine, ids) == {charge.checkout_id: 1}
    assert await _reconciles(engine, ids) == {charge.checkout_id: 1}


async def test_a_deadline_whose_checkout_is_busy_waits_for_the_next_round(
    hot_uow: UnitOfWork, engine: AsyncEngine
) -> None:
    charge = await pending_checkout(hot_uow, payment_deadline=DUE_AT_ONCE)
    ids = [charge.checkout_id]
    await eventually(lambda: _due(engine, ids), until=bool, what="the deadline due")
    async with engine.connect() as holder:
        await holder.execute(
            text("SELECT 1 FROM checkouts WHERE checkout_id = :c FOR UPDATE"),
            {"c": charge.checkout_id},
        )
        fired = await asyncio.wait_for(CheckoutSaga(hot_uow).fire_due(), timeout=5)
        assert charge.checkout_id not in {a.checkout_id for a in fired}  # not waited for
        await holder.rollback()
    fired = await CheckoutSaga(hot_uow).fire_due()
    assert charge.checkout_id in {a.checkout_id for a in fired}


async def test_a_deadline_left_behind_a_final_checkout_is_dropped(
    hot_uow: UnitOfWork, engine: AsyncEngine
) -> None:
    charge = await pending_checkout(hot_uow)
    await CheckoutSaga(hot_uow).apply(PaymentSucceeded(charge.checkout_id, "p-1"), uuid.uuid4())
    async with engine.begin() as conn:  # as if one were set after the end
        await conn.execute(
            text(
                "INSERT INTO deadlines (deadline_id, saga, saga_id, kind, due_at, attempts,"
                " created_at) VALUES (:d, 'checkout', :c, 'payment', now(), 0, now())"
            ),
            {"d": uuid.uuid4(), "c": charge.checkout_id},
        )
    [fired] = [
        a for a in await CheckoutSaga(hot_uow).fire_due() if a.checkout_id == charge.checkout_id
    ]
    assert fired.transition is not None
    assert fired.transition.step.name == "DeadlineReached.ignored"
    assert await _deadlines(engine, charge.checkout_id) == []
