"""The payment step applies its outcome itself: once per command, whatever is redelivered.

The Payment Service is faked at its client (the boundary); the database is real.
"""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts import ChargePayment
from infra.db.session import UnitOfWork
from infra.messaging.consumer import Delivery, Handled
from saga.inputs import SagaInput
from saga.orchestrator import Applied, CheckoutSaga
from saga.payment_client import Charged, Declined, PaymentClient
from saga.payment_step import PaymentStep
from tests.support.seed import pending_checkout

pytestmark = pytest.mark.integration


class FakePayments(PaymentClient):
    """Answers every charge with `outcome` and counts the calls per key."""

    def __init__(self, outcome: Charged | Declined) -> None:
        self.outcome = outcome
        self.calls: list[str] = []

    async def charge(
        self, *, order_id: uuid.UUID, amount: Decimal, currency: str, idempotency_key: str
    ) -> Charged | Declined:
        self.calls.append(idempotency_key)
        return self.outcome


class CrashingOnce(CheckoutSaga):
    """The process dies once between the service's answer and the commit."""

    crashed = False

    async def apply(self, message: SagaInput, message_id: uuid.UUID) -> Applied:
        if not self.crashed:
            self.crashed = True
            raise ConnectionError("killed before the commit")
        return await super().apply(message, message_id)


def _delivery(message_id: uuid.UUID, attempt: int = 1) -> Delivery:
    return Delivery(message_id, None, "ChargePayment", attempt, "payment")


async def _state(engine: AsyncEngine, command: ChargePayment) -> tuple[str, str, str, int]:
    async with engine.connect() as conn:
        row = await conn.execute(
            text(
                "SELECT c.state, p.status, o.status,"
                " (SELECT count(*) FROM outbox WHERE correlation_id = c.checkout_id"
                "  AND message_type IN ('OrderPaid', 'OrderPaymentFailed'))"
                " FROM checkouts c JOIN payments p USING (checkout_id)"
                " JOIN orders o ON o.order_id = c.order_id WHERE c.checkout_id = :c"
            ),
            {"c": command.checkout_id},
        )
        state, payment, order, events = row.one()
        return state, payment, order, int(events)


async def test_a_charge_is_applied_before_the_command_is_done(
    hot_uow: UnitOfWork, engine: AsyncEngine
) -> None:
    command = await pending_checkout(hot_uow)
    payments = FakePayments(Charged("p-1"))
    step = PaymentStep(hot_uow, payments, CheckoutSaga(hot_uow))

    assert await step.handle(command, _delivery(uuid.uuid4())) == Handled.DONE

    assert await _state(engine, command) == ("PAID", "SUCCESSFUL", "PAID", 1)
    assert payments.calls == [str(command.checkout_id)]


async def test_a_declined_charge_fails_the_checkout(
    hot_uow: UnitOfWork, engine: AsyncEngine
) -> None:
    command = await pending_checkout(hot_uow)
    step = PaymentStep(hot_uow, FakePayments(Declined("card_declined")), CheckoutSaga(hot_uow))

    assert await step.handle(command, _delivery(uuid.uuid4())) == Handled.DONE

    assert await _state(engine, command) == ("FAILED", "FAILED", "FAILED", 1)


async def test_a_crash_between_the_call_and_the_commit_repeats_the_call_and_applies_once(
    hot_uow: UnitOfWork, engine: AsyncEngine
) -> None:
    command = await pending_checkout(hot_uow)
    payments = FakePayments(Charged("p-1"))
    step = PaymentStep(hot_uow, payments, CrashingOnce(hot_uow))
    message_id = uuid.uuid4()

    with pytest.raises(ConnectionError):  # the shell retries it: a redelivery
        await step.handle(command, _delivery(message_id))
    assert await _state(engine, command) == ("PAYMENT_PENDING", "PENDING", "PENDING", 0)

    assert await step.handle(command, _delivery(message_id, 2)) == Handled.DONE
    # A copy delivered after the commit (a duplicate publish, a replay): no call at all.
    assert await step.handle(command, _delivery(message_id, 1)) == Handled.DUPLICATE

    assert await _state(engine, command) == ("PAID", "SUCCESSFUL", "PAID", 1)
    # The same idempotency key both times: the service charged once.
    assert payments.calls == [str(command.checkout_id)] * 2
