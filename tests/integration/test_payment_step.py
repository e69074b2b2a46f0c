"""The payment step applies its outcome itself: once per command, whatever is redelivered.

The Payment Service is faked at its client (the boundary); the database is real.
"""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts import ChargePayment, ReconcilePayment, RefundPayment
from infra.db.session import UnitOfWork
from infra.messaging.consumer import Delivery, Handled
from infra.messaging.failures import TransientFailure
from saga.inputs import PaymentNotFound, PaymentSucceeded, SagaInput
from saga.orchestrator import Applied, CheckoutSaga
from saga.payment_client import Charged, Declined, PaymentClient
from saga.payment_step import PaymentStep
from tests.support.seed import pending_checkout

pytestmark = pytest.mark.integration


class FakePayments(PaymentClient):
    """Answers every charge with `outcome`, every lookup with `found`; counts the calls."""

    def __init__(
        self, outcome: Charged | Declined, found: Charged | Declined | Exception | None = None
    ) -> None:
        self.outcome = outcome
        self.found = found
        self.calls: list[str] = []
        self.lookups: list[str] = []

    async def charge(
        self, *, order_id: uuid.UUID, amount: Decimal, currency: str, idempotency_key: str
    ) -> Charged | Declined:
        self.calls.append(idempotency_key)
        return self.outcome

    async def find(self, idempotency_key: str) -> Charged | Declined | None:
        self.lookups.append(idempotency_key)
        if isinstance(self.found, Exception):
            raise self.found
        return self.found


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


def _reconcile(command: ChargePayment) -> ReconcilePayment:
    return ReconcilePayment(
        checkout_id=command.checkout_id, order_id=command.order_id, payment_id=command.payment_id
    )


async def _steps(engine: AsyncEngine, command: ChargePayment) -> list[tuple[str, str | None]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT name, detail FROM checkout_steps WHERE checkout_id = :c ORDER BY id"),
            {"c": command.checkout_id},
        )
        return [(name, detail) for name, detail in rows.all()]


async def _failure(engine: AsyncEngine, command: ChargePayment) -> str | None:
    async with engine.connect() as conn:
        found = await conn.execute(
            text("SELECT failure_reason FROM checkouts WHERE checkout_id = :c"),
            {"c": command.checkout_id},
        )
        reason: str | None = found.scalar_one()
        return reason


async def test_reconciliation_finding_no_charge_fails_the_checkout_with_payment_timeout(
    hot_uow: UnitOfWork, engine: AsyncEngine
) -> None:
    command = await pending_checkout(hot_uow)
    payments = FakePayments(Charged("p-1"), found=None)
    step = PaymentStep(hot_uow, payments, CheckoutSaga(hot_uow))

    assert await step.reconcile(_reconcile(command), _delivery(uuid.uuid4())) == Handled.DONE

    assert await _state(engine, command) == ("FAILED", "FAILED", "FAILED", 1)
    assert await _failure(engine, command) == "payment_timeout"
    assert payments.lookups == [str(command.checkout_id)]
    # From now on its charge command charges nothing, wherever a copy of it waited.
    assert await step.handle(command, _delivery(uuid.uuid4())) == Handled.DONE
    assert payments.calls == []


@pytest.mark.parametrize(
    ("found", "expected"),
    [
        (Charged("p-9"), ("PAID", "SUCCESSFUL", "PAID", 1)),
        (Declined("card_declined"), ("FAILED", "FAILED", "FAILED", 1)),
    ],
    ids=["found-successful", "found-failed"],
)
async def test_reconciliation_applies_the_charge_it_finds(
    hot_uow: UnitOfWork,
    engine: AsyncEngine,
    found: Charged | Declined,
    expected: tuple[str, str, str, int],
) -> None:
    command = await pending_checkout(hot_uow)
    step = PaymentStep(hot_uow, FakePayments(Charged("p-1"), found), CheckoutSaga(hot_uow))

    assert await step.reconcile(_reconcile(command), _delivery(uuid.uuid4())) == Handled.DONE

    assert await _state(engine, command) == expected
    assert "(found by reconciliation)" in str((await _steps(engine, command))[-1][1])


async def test_an_unanswered_reconciliation_keeps_the_checkout_pending_and_says_why(
    hot_uow: UnitOfWork, engine: AsyncEngine
) -> None:
    command = await pending_checkout(hot_uow)
    unreachable = TransientFailure("payments service answered 503: down")
    step = PaymentStep(hot_uow, FakePayments(Charged("p-1"), unreachable), CheckoutSaga(hot_uow))

    assert await step.reconcile(_reconcile(command), _delivery(uuid.uuid4())) == Handled.DONE

    assert await _state(engine, command) == ("PAYMENT_PENDING", "PENDING", "PENDING", 0)
    name, detail = (await _steps(engine, command))[-1]
    assert name == "payment.reconciliation"
    assert "payments service answered 503: down" in str(detail)


async def test_a_success_after_the_checkout_failed_is_recorded_for_its_refund(
    hot_uow: UnitOfWork, engine: AsyncEngine
) -> None:
    command = await pending_checkout(hot_uow)
    saga = CheckoutSaga(hot_uow)
    await saga.apply(PaymentNotFound(command.checkout_id), uuid.uuid4())

    await saga.apply(PaymentSucceeded(command.checkout_id, "p-late"), uuid.uuid4())

    # The money was taken: the payment says so; the order and the checkout stay FAILED.
    assert await _state(engine, command) == ("FAILED", "SUCCESSFUL", "FAILED", 1)
    assert await _failure(engine, command) == "payment_timeout"
    name, detail = (await _steps(engine, command))[-1]
    assert name == "payment.late_success"
    assert "p-late" in str(detail)
    async with engine.connect() as conn:
        provider = await conn.execute(
            text("SELECT provider_payment_id FROM payments WHERE payment_id = :p"),
            {"p": command.payment_id},
        )
        assert provider.scalar_one() == "p-late"
        refund = await conn.execute(
            text("SELECT status, idempotency_key FROM refunds WHERE payment_id = :p"),
            {"p": command.payment_id},
        )
        [(status, key)] = refund.all()
        commands = await conn.execute(
            text(
                "SELECT body FROM outbox WHERE message_type = 'RefundPayment'"
                " AND correlation_id = :c"
            ),
            {"c": command.checkout_id},
        )
        [(body,)] = commands.all()
    # The refund step takes it from here (payment REFUNDED, OrderPaymentRefunded).
    assert status == "PENDING"
    sent = RefundPayment.model_validate_json(body)
    assert (sent.provider_payment_id, sent.cancellation_id, sent.idempotency_key) == (
        "p-late",
        None,
        key,
    )
    assert sent.amount == command.amount
