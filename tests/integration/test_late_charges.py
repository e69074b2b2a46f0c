"""A charge whose answer is lost lands after its checkout failed, and is refunded once.

Against the real simulated Payment Service (served here) and the real database: a
`.03` charge slower than the client's HTTP timeout, so its answer is lost, while the
payment deadline fails the checkout (the service says "no such payment" until the slow
charge has answered: it is still on its way). The charge then lands. Deadlines are
made due by moving their rows, never waited for; the charge's landing is polled for.

This is the hole the chaos run with short deadlines found (issue 13): the looks for a
late charge stopped after three, however long a charge already on its way could still
take, and a charge command redelivered after the end was acked without asking.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal

import aiohttp
import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts import ChargePayment, ReconcilePayment
from infra.db.session import UnitOfWork
from infra.http import MAX_BACKOFF, ServiceClient
from infra.messaging.consumer import Delivery, Handled
from infra.messaging.failures import TransientFailure
from infra.settings import Settings
from mock_services.app import create_app as create_mocks
from saga.orchestrator import CheckoutSaga
from saga.payment_client import PaymentClient
from saga.payment_step import PaymentStep
from saga.state_machine import late_charge_window
from tests.support.polling import eventually
from tests.support.seed import outbox_count, pending_checkout
from tests.support.servers import serving

pytestmark = pytest.mark.integration

SLOW_SECONDS = 2.0  # how long the simulated service takes to answer a .03 charge
HTTP_TIMEOUT = 0.4  # the client gives up long before: the charge's answer is lost
HTTP_ATTEMPTS = 1
SLOW_AMOUNT = Decimal("12.03")


@pytest.fixture
async def mocks(settings: Settings) -> AsyncIterator[str]:
    async with serving(create_mocks(settings, slow_response_seconds=SLOW_SECONDS)) as url:
        yield url


@pytest.fixture
async def payments(mocks: str) -> AsyncIterator[PaymentClient]:
    timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout, trust_env=False) as http:
        yield PaymentClient(ServiceClient("payment", http, mocks, attempts=HTTP_ATTEMPTS))


def _delivery(message_id: uuid.UUID, kind: str = "ChargePayment") -> Delivery:
    return Delivery(message_id, None, kind, 1, "payment")


def _reconcile(command: ChargePayment) -> ReconcilePayment:
    return ReconcilePayment(
        checkout_id=command.checkout_id, order_id=command.order_id, payment_id=command.payment_id
    )


async def _make_due(engine: AsyncEngine, command: ChargePayment) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE deadlines SET due_at = now() WHERE saga_id = :c"),
            {"c": command.checkout_id},
        )


async def _look(saga: CheckoutSaga, engine: AsyncEngine, command: ChargePayment) -> str:
    """Fire the checkout's deadline now; the name of the step it took."""
    await _make_due(engine, command)
    [fired] = [a for a in await saga.fire_due() if a.checkout_id == command.checkout_id]
    assert fired.transition is not None
    return fired.transition.step.name


async def _kinds(engine: AsyncEngine, command: ChargePayment) -> list[str]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT kind FROM deadlines WHERE saga_id = :c"), {"c": command.checkout_id}
        )
        return [kind for (kind,) in rows.all()]


async def _outcome(engine: AsyncEngine, command: ChargePayment) -> tuple[str, str, str, str]:
    async with engine.connect() as conn:
        row = await conn.execute(
            text(
                "SELECT c.state, c.failure_reason, o.status, p.status"
                " FROM checkouts c JOIN payments p USING (checkout_id)"
                " JOIN orders o ON o.order_id = c.order_id WHERE c.checkout_id = :c"
            ),
            {"c": command.checkout_id},
        )
        state, reason, order, payment = row.one()
        return state, reason, order, payment


async def _refunds(engine: AsyncEngine, command: ChargePayment) -> list[str]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT idempotency_key FROM refunds WHERE payment_id = :p"),
            {"p": command.payment_id},
        )
        return [key for (key,) in rows.all()]


async def _charges(mocks: str, command: ChargePayment) -> list[dict[str, object]]:
    """The simulated service's entries for the checkout's key (one per key)."""
    async with httpx.AsyncClient(base_url=mocks) as client:
        entries = (await client.get("/mock/payments")).json()
    return [e for e in entries if e["idempotency_key"] == str(command.checkout_id)]


async def _landed(mocks: str, command: ChargePayment) -> bool:
    async with httpx.AsyncClient(base_url=mocks) as client:
        found = await client.get(f"/payments/{command.checkout_id}")
    return found.status_code == 200


async def _fail_while_the_charge_is_on_its_way(
    hot_uow: UnitOfWork,
    engine: AsyncEngine,
    payments: PaymentClient,
    mocks: str,
    saga: CheckoutSaga,
) -> tuple[ChargePayment, PaymentStep, uuid.UUID]:
    """Send the slow charge (its answer lost to the client's timeout), and fail the
    checkout by its reconciliation meanwhile; the charge is still on its way."""
    command = await pending_checkout(hot_uow, SLOW_AMOUNT)
    step = PaymentStep(hot_uow, payments, saga)
    message_id = uuid.uuid4()
    with pytest.raises(TransientFailure, match="timed out"):
        await step.handle(command, _delivery(message_id))
    assert await _look(saga, engine, command) == "deadline.fired"
    assert await step.reconcile(_reconcile(command), _delivery(uuid.uuid4())) == Handled.DONE
    assert await _outcome(engine, command) == ("FAILED", "payment_timeout", "FAILED", "FAILED")
    assert not await _landed(mocks, command)  # on its way still
    return command, step, message_id


async def test_a_charge_landing_after_three_looks_is_still_found_and_refunded_once(
    hot_uow: UnitOfWork, engine: AsyncEngine, payments: PaymentClient, mocks: str
) -> None:
    window = late_charge_window(HTTP_TIMEOUT, HTTP_ATTEMPTS, MAX_BACKOFF)
    assert window > SLOW_SECONDS  # so a charge on its way lands within the window
    saga = CheckoutSaga(hot_uow, payment_deadline=0.001, late_window=window)
    command, step, _ = await _fail_while_the_charge_is_on_its_way(
        hot_uow, engine, payments, mocks, saga
    )

    # Three looks before it lands (where the looking used to stop), each finding nothing.
    for _ in range(3):
        assert await _look(saga, engine, command) == "late_charge.lookup"
        assert await step.reconcile(_reconcile(command), _delivery(uuid.uuid4())) == Handled.DONE
    assert not await _landed(mocks, command)
    assert await _kinds(engine, command) == ["late_charge"]  # the window is not over

    await eventually(lambda: _landed(mocks, command), timeout=10, what="the slow charge to land")
    assert await _look(saga, engine, command) == "late_charge.lookup"
    assert await step.reconcile(_reconcile(command), _delivery(uuid.uuid4())) == Handled.DONE

    # Found: a late success, refunded once; the order stays FAILED; no more looking.
    assert await _outcome(engine, command) == (
        "FAILED",
        "payment_timeout",
        "FAILED",
        "SUCCESSFUL",
    )
    assert len(await _refunds(engine, command)) == 1
    assert await _kinds(engine, command) == []
    [charge] = await _charges(mocks, command)
    assert charge["attempts"] == 1  # one charge request, ever

    # Heard of once more (another look's answer): the refund is not asked for again.
    assert await step.reconcile(_reconcile(command), _delivery(uuid.uuid4())) == Handled.DONE
    assert len(await _refunds(engine, command)) == 1
    assert await outbox_count(engine, "RefundPayment", command.checkout_id) == 1


async def test_a_redelivered_charge_command_finds_a_charge_that_landed_after_the_looks(
    hot_uow: UnitOfWork, engine: AsyncEngine, payments: PaymentClient, mocks: str
) -> None:
    # A window shorter than the service's lag (a charge the service finished long after
    # the client gave up): the looks end before it lands. The charge command's copy,
    # redelivered from the retry queue after the end, looks it up instead of charging.
    saga = CheckoutSaga(hot_uow, payment_deadline=0.001, late_window=0.001)
    command, step, message_id = await _fail_while_the_charge_is_on_its_way(
        hot_uow, engine, payments, mocks, saga
    )
    assert await _look(saga, engine, command) == "late_charge.lookup"
    assert await step.reconcile(_reconcile(command), _delivery(uuid.uuid4())) == Handled.DONE
    assert await _kinds(engine, command) == []  # the last look: nothing found
    await eventually(lambda: _landed(mocks, command), timeout=10, what="the slow charge to land")

    assert await step.handle(command, _delivery(message_id)) == Handled.DONE

    assert await _outcome(engine, command) == (
        "FAILED",
        "payment_timeout",
        "FAILED",
        "SUCCESSFUL",
    )
    assert len(await _refunds(engine, command)) == 1
    # Redelivered once more, and a concurrent copy: still one refund, no charge request.
    results = await asyncio.gather(
        step.handle(command, _delivery(message_id)), step.handle(command, _delivery(message_id))
    )
    assert list(results) == [Handled.DUPLICATE, Handled.DUPLICATE]
    assert len(await _refunds(engine, command)) == 1
    [charge] = await _charges(mocks, command)
    assert charge["attempts"] == 1
