"""A cancellation waiting for its checkout has a deadline: set with it after the
checkout's own, cancelled by the checkout's end, fired once by any number of claimers,
fired again after a crash between the claim and the commit; each shown in the timeline
and by `checkout stuck`. Due times are moved in the table, never waited for."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from checkout_api.usecases.cancel_order import cancel_order
from contracts import ChargePayment
from infra.db.session import UnitOfWork
from operations.stuck import find_stuck
from operations.timeline.query import trace as load_trace
from operations.timeline.render import trace_json
from saga import cancellation
from saga.cancellation_deadlines import CancellationDeadlines, Fired
from saga.cancellation_state_machine import CHECKOUT_WAIT_MARGIN, DeadlineFired, wait_backoff
from saga.inputs import PaymentDeclined, PaymentSucceeded
from saga.orchestrator import CheckoutSaga
from tests.support.polling import eventually
from tests.support.seed import pending_checkout

pytestmark = pytest.mark.integration


async def _waiting(uow: UnitOfWork) -> tuple[ChargePayment, uuid.UUID]:
    """A checkout in flight (payment deadline in 90 s) and its order's cancellation."""
    charge = await pending_checkout(uow, payment_deadline=90)
    outcome = await cancel_order(uow, charge.order_id, "changed my mind", refund_window_days=30)
    assert outcome.state == "WAITING_FOR_CHECKOUT"
    return charge, outcome.cancellation_id


async def _rows(engine: AsyncEngine, sql: str, **params: Any) -> list[Any]:
    async with engine.connect() as conn:
        return list((await conn.execute(text(sql), params)).all())


async def _deadline(engine: AsyncEngine, saga_id: uuid.UUID) -> list[Any]:
    return await _rows(
        engine, "SELECT saga, kind, due_at, attempts FROM deadlines WHERE saga_id = :s", s=saga_id
    )


async def _timeline(engine: AsyncEngine, saga_id: uuid.UUID) -> list[tuple[str, str]]:
    rows = await _rows(
        engine,
        "SELECT kind, detail FROM checkout_events WHERE checkout_id = :s ORDER BY id",
        s=saga_id,
    )
    return [(kind, detail) for kind, detail in rows]


async def _steps(engine: AsyncEngine, cancellation_id: uuid.UUID) -> list[str]:
    rows = await _rows(
        engine,
        "SELECT name FROM cancellation_steps WHERE cancellation_id = :c ORDER BY id",
        c=cancellation_id,
    )
    return [name for (name,) in rows]


def _ours(fired: list[Fired], ids: list[uuid.UUID]) -> list[Fired]:
    """The firings of this test's cancellations: the database is the session's, and
    other tests leave deadlines that fall due again."""
    return [f for f in fired if f.applied.cancellation_id in ids]


async def _make_due(engine: AsyncEngine, ids: list[uuid.UUID]) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE deadlines SET due_at = now() - interval '1 second'"
                " WHERE saga = 'cancellation' AND saga_id = ANY(:ids)"
            ),
            {"ids": ids},
        )


async def test_waiting_sets_a_deadline_after_the_checkouts_own(
    hot_uow: UnitOfWork, engine: AsyncEngine
) -> None:
    charge, cancellation_id = await _waiting(hot_uow)
    [(_, _, payment_due, _)] = await _deadline(engine, charge.checkout_id)
    [(saga, kind, due_at, attempts)] = await _deadline(engine, cancellation_id)
    assert (saga, kind, attempts) == ("cancellation", "checkout", 0)
    assert due_at == payment_due + timedelta(seconds=CHECKOUT_WAIT_MARGIN)
    [(event, detail)] = await _timeline(engine, cancellation_id)
    assert event == "deadline.set"
    assert detail == f"checkout deadline due at {due_at.astimezone(UTC):%Y-%m-%dT%H:%M:%S+0000}"


@pytest.mark.parametrize(
    ("outcome", "state"),
    [
        (lambda c: PaymentSucceeded(c, "p-1"), "CANCELLING_PRODUCTION"),
        (lambda c: PaymentDeclined(c, "card_declined"), "CANCELLED"),
    ],
    ids=["paid", "declined"],
)
async def test_the_checkouts_end_cancels_the_deadline(
    hot_uow: UnitOfWork, engine: AsyncEngine, outcome: Any, state: str
) -> None:
    charge, cancellation_id = await _waiting(hot_uow)
    await CheckoutSaga(hot_uow).apply(outcome(charge.checkout_id), uuid.uuid4())
    [(now_state,)] = await _rows(
        engine, "SELECT state FROM cancellations WHERE cancellation_id = :c", c=cancellation_id
    )
    assert now_state == state
    assert await _deadline(engine, cancellation_id) == []
    assert [e for e, _ in await _timeline(engine, cancellation_id)] == [
        "deadline.set",
        "deadline.cancelled",
    ]


async def test_fired_while_the_checkout_is_in_flight_it_waits_again_and_shows_as_stuck(
    hot_uow: UnitOfWork, engine: AsyncEngine
) -> None:
    charge, cancellation_id = await _waiting(hot_uow)
    await _make_due(engine, [cancellation_id])

    fired = await CancellationDeadlines(hot_uow).fire_due()

    [one] = [f for f in fired if f.applied.cancellation_id == cancellation_id]
    assert one.applied.transition is not None
    assert one.applied.transition.step.name == "deadline.fired"
    [(_, _, due_at, attempts)] = await _deadline(engine, cancellation_id)
    assert attempts == 1  # set again, with its backoff
    assert due_at > datetime.now(UTC) + timedelta(seconds=wait_backoff(1) - 5)
    assert (await _steps(engine, cancellation_id))[-1] == "deadline.fired"
    assert [e for e, _ in await _timeline(engine, cancellation_id)] == [
        "deadline.set",
        "deadline.set",
    ]
    # `checkout stuck` names the deadline and the checkout it waits for.
    async with engine.connect() as conn:
        found = await find_stuck(conn, datetime.now(UTC) + timedelta(hours=1), timedelta(0))
    [stuck] = [s for s in found if s.id == cancellation_id]
    assert stuck.state == "WAITING_FOR_CHECKOUT"
    waits = {w.what: w.detail for w in stuck.waiting}
    assert waits["deadline"].startswith("checkout deadline at ")
    assert "fired 1 time" in waits["deadline"]
    assert waits["checkout"] == f"checkout {charge.checkout_id} to end"

    # The checkout ends: the cancellation takes over, its deadline (set again) cancelled.
    await CheckoutSaga(hot_uow).apply(PaymentSucceeded(charge.checkout_id, "p-2"), uuid.uuid4())
    assert await _deadline(engine, cancellation_id) == []


async def test_two_claimers_fire_each_due_deadline_once(
    hot_uow: UnitOfWork, engine: AsyncEngine
) -> None:
    waiting = [await _waiting(hot_uow) for _ in range(6)]
    ids = [c for _, c in waiting]
    await _make_due(engine, ids)
    first, second = CancellationDeadlines(hot_uow), CancellationDeadlines(hot_uow)

    fired = await asyncio.gather(*(c.fire_due(2) for c in (first, second, first, second)))

    ours = [f.applied.cancellation_id for batch in fired for f in _ours(batch, ids)]
    assert len(ours) == len(set(ours))  # none fired twice

    async def fire_a_round() -> list[uuid.UUID]:  # the rest, a round at a time
        ours.extend(f.applied.cancellation_id for f in _ours(await first.fire_due(), ids))
        return ours

    await eventually(fire_a_round, until=lambda o: len(o) >= len(ids), what="each one fired")
    assert sorted(ours) == sorted(ids)
    for cancellation_id in ids:
        steps = await _steps(engine, cancellation_id)
        assert steps.count("deadline.fired") == 1
        [(_, _, due_at, attempts)] = await _deadline(engine, cancellation_id)
        assert attempts == 1
        assert due_at > datetime.now(UTC)
    assert _ours(await first.fire_due(), ids) == []  # nothing due any more


class CrashingBeforeTheCommit(CancellationDeadlines):
    """Dies after claiming and applying a due row, before the commit."""

    async def _fire(
        self,
        conn: psycopg.AsyncConnection[Any],
        deadline_id: uuid.UUID,
        cancellation_id: uuid.UUID,
        message: DeadlineFired,
        now: datetime,
    ) -> cancellation.Applied:
        await super()._fire(conn, deadline_id, cancellation_id, message, now)
        raise ConnectionError("killed between the claim and the commit")


async def test_a_crash_between_claim_and_commit_fires_the_deadline_later(
    hot_uow: UnitOfWork, engine: AsyncEngine
) -> None:
    _, cancellation_id = await _waiting(hot_uow)
    await _make_due(engine, [cancellation_id])

    with pytest.raises(ConnectionError):
        await CrashingBeforeTheCommit(hot_uow).fire_due()
    [(_, _, due_at, attempts)] = await _deadline(engine, cancellation_id)
    assert attempts == 0  # still there, still due: nothing was fired
    assert due_at <= datetime.now(UTC)
    assert "deadline.fired" not in await _steps(engine, cancellation_id)

    fired = _ours(await CancellationDeadlines(hot_uow).fire_due(), [cancellation_id])
    assert [f.applied.cancellation_id for f in fired] == [cancellation_id]
    assert (await _steps(engine, cancellation_id)).count("deadline.fired") == 1


async def test_a_deadline_whose_order_is_busy_waits_for_the_next_round(
    hot_uow: UnitOfWork, engine: AsyncEngine
) -> None:
    charge, cancellation_id = await _waiting(hot_uow)
    await _make_due(engine, [cancellation_id])
    async with engine.connect() as holder:  # a transition of the order under way
        await holder.execute(
            text("SELECT 1 FROM orders WHERE order_id = :o FOR NO KEY UPDATE"),
            {"o": charge.order_id},
        )
        fired = await asyncio.wait_for(CancellationDeadlines(hot_uow).fire_due(), timeout=5)
        assert _ours(fired, [cancellation_id]) == []  # skipped, not waited for
        await holder.rollback()
    fired = _ours(await CancellationDeadlines(hot_uow).fire_due(), [cancellation_id])
    assert [f.applied.cancellation_id for f in fired] == [cancellation_id]


async def test_a_checkout_that_ended_without_taking_over_is_taken_over_when_it_fires(
    hot_uow: UnitOfWork, engine: AsyncEngine
) -> None:
    charge, cancellation_id = await _waiting(hot_uow)
    async with engine.begin() as conn:  # as if its end had missed the cancellation
        await conn.execute(
            text("UPDATE checkouts SET state = 'FAILED' WHERE checkout_id = :c"),
            {"c": charge.checkout_id},
        )
    await _make_due(engine, [cancellation_id])

    [fired] = _ours(await CancellationDeadlines(hot_uow).fire_due(), [cancellation_id])

    assert fired.applied.transition is not None
    assert fired.applied.transition.state == "CANCELLED"
    assert await _deadline(engine, cancellation_id) == []
    [(status,)] = await _rows(
        engine, "SELECT status FROM orders WHERE order_id = :o", o=charge.order_id
    )
    assert status == "CANCELLED"


async def test_the_trace_shows_the_cancellations_deadline_set_fired_and_cancelled(
    hot_uow: UnitOfWork, engine: AsyncEngine
) -> None:
    charge, cancellation_id = await _waiting(hot_uow)
    await _make_due(engine, [cancellation_id])
    await CancellationDeadlines(hot_uow).fire_due()
    await CheckoutSaga(hot_uow).apply(PaymentSucceeded(charge.checkout_id, "p-3"), uuid.uuid4())

    async with engine.connect() as conn:
        found = await load_trace(conn, cancellation_id)
    assert found is not None
    [one] = trace_json(found)["cancellations"]
    whats = [e["what"] for e in one["entries"]]
    # Set with the cancellation, fired (the step says it waits again), set again, then
    # cancelled when the checkout's end took the cancellation over.
    # (The firing's step and the new row are written at one instant: either order.)
    deadlines = [w.split(":")[0] for w in whats if w.startswith("deadline")]
    assert deadlines[0] == "deadline set", whats
    assert sorted(deadlines[1:3]) == ["deadline set", "deadline.fired"], whats
    assert deadlines[3:] == ["deadline cancelled"], whats
    [fired] = [e for e in one["entries"] if e["what"].startswith("deadline.fired")]
    assert fired["detail"].startswith("checkout deadline (time 1): the checkout is still")
