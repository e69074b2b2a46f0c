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
from saga.inputs import PaymentDeclined, PaymentNotFound, PaymentSucceeded, SagaInput
from saga.orchestrator import Applied, CheckoutSaga
from saga.payment_client import Charged, Declined, PaymentClient
from saga.payment_step import PaymentStep, reply_id
from tests.support.seed import outbox_count, pending_checkout

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


async def _timed_out(hot_uow: UnitOfWork) -> tuple[ChargePayment, CheckoutSaga]:
    """A checkout its reconciliation failed `payment_timeout` (no charge found), and the
    saga that failed it."""
    command = await pending_checkout(hot_uow)
    saga = CheckoutSaga(hot_uow)
    await saga.apply(PaymentNotFound(command.checkout_id), uuid.uuid4())
    return command, saga


async def test_a_success_after_the_checkout_failed_is_recorded_for_its_refund(
    hot_uow: UnitOfWork, engine: AsyncEngine
) -> None:
    command, saga = await _timed_out(hot_uow)

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


async def _deadlines(engine: AsyncEngine, command: ChargePayment) -> list[tuple[str, int]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT kind, attempts FROM deadlines WHERE saga_id = :c ORDER BY kind"),
            {"c": command.checkout_id},
        )
        return [(kind, int(attempts)) for kind, attempts in rows.all()]


async def test_a_charge_that_lands_after_the_timeout_is_found_by_a_later_look_and_refunded(
    hot_uow: UnitOfWork, engine: AsyncEngine
) -> None:
    # The call was on its way when the reconciliation found nothing; its answer never
    # reached the saga (killed, connection reset). The charge is found by a later look.
    command = await pending_checkout(hot_uow)
    payments = FakePayments(Charged("p-1"), found=None)
    saga = CheckoutSaga(hot_uow, payment_deadline=0.001)
    step = PaymentStep(hot_uow, payments, saga)
    await step.reconcile(_reconcile(command), _delivery(uuid.uuid4()))
    assert await _deadlines(engine, command) == [("late_charge", 0)]

    async with engine.begin() as conn:  # due now, not waited for
        await conn.execute(
            text("UPDATE deadlines SET due_at = now() WHERE saga_id = :c"),
            {"c": command.checkout_id},
        )
    [fired] = [a for a in await saga.fire_due() if a.checkout_id == command.checkout_id]
    assert fired.transition is not None
    assert fired.transition.step.name == "late_charge.lookup"
    assert await _deadlines(engine, command) == [("late_charge", 1)]  # looks again later

    payments.found = Charged("p-landed")  # the charge landed meanwhile
    assert await step.reconcile(_reconcile(command), _delivery(uuid.uuid4())) == Handled.DONE

    assert await _state(engine, command) == ("FAILED", "SUCCESSFUL", "FAILED", 1)
    assert (await _steps(engine, command))[-1][0] == "payment.late_success"
    assert await _deadlines(engine, command) == []  # found: no more looking
    async with engine.connect() as conn:
        refunds = await conn.execute(
            text("SELECT count(*) FROM refunds WHERE payment_id = :p"), {"p": command.payment_id}
        )
        assert refunds.scalar_one() == 1
    assert payments.calls == []  # looking never charges


async def test_a_paid_checkout_is_not_asked_about_again(
    hot_uow: UnitOfWork, engine: AsyncEngine
) -> None:
    command = await pending_checkout(hot_uow)
    payments = FakePayments(Charged("p-1"), found=Charged("p-1"))
    step = PaymentStep(hot_uow, payments, CheckoutSaga(hot_uow))
    await step.handle(command, _delivery(uuid.uuid4()))
    assert await step.reconcile(_reconcile(command), _delivery(uuid.uuid4())) == Handled.DONE
    assert payments.lookups == []
    assert await _state(engine, command) == ("PAID", "SUCCESSFUL", "PAID", 1)


async def _refunds(engine: AsyncEngine, command: ChargePayment) -> tuple[int, int]:
    """The refunds recorded for the command's payment, and the refund commands sent."""
    async with engine.connect() as conn:
        refunds = await conn.execute(
            text("SELECT count(*) FROM refunds WHERE payment_id = :p"), {"p": command.payment_id}
        )
    return int(refunds.scalar_one()), await outbox_count(
        engine, "RefundPayment", command.checkout_id
    )


async def test_a_charge_command_of_a_failed_checkout_looks_up_its_charge_and_refunds_it(
    hot_uow: UnitOfWork, engine: AsyncEngine
) -> None:
    # The delivery that sent the charge died (or lost its answer); its command comes back
    # after the reconciliation failed the checkout, and after the charge landed.
    command, saga = await _timed_out(hot_uow)
    payments = FakePayments(Charged("p-1"), found=Charged("p-landed"))
    step = PaymentStep(hot_uow, payments, saga)
    message_id = uuid.uuid4()

    assert await step.handle(command, _delivery(message_id, attempt=2)) == Handled.DONE

    assert payments.calls == []  # never charged: looked up
    assert payments.lookups == [str(command.checkout_id)]
    assert await _state(engine, command) == ("FAILED", "SUCCESSFUL", "FAILED", 1)
    assert await _failure(engine, command) == "payment_timeout"
    assert (await _steps(engine, command))[-1][0] == "payment.late_success"
    assert await _refunds(engine, command) == (1, 1)
    # Redelivered again (a lost ack): nothing more.
    assert await step.handle(command, _delivery(message_id, attempt=3)) == Handled.DUPLICATE
    assert await _refunds(engine, command) == (1, 1)
    # The delivery that sent the charge was alive after all and now hears its answer:
    # its key is still free, and the charge is still refunded once.
    late = await saga.apply(PaymentSucceeded(command.checkout_id, "p-landed"), reply_id(message_id))
    assert late.transition is not None
    assert (await _refunds(engine, command))[0] == 1
    assert payments.calls == []


async def test_a_charge_command_of_a_failed_checkout_finding_no_charge_changes_nothing_yet(
    hot_uow: UnitOfWork, engine: AsyncEngine
) -> None:
    command, saga = await _timed_out(hot_uow)
    before = await _deadlines(engine, command)
    payments = FakePayments(Charged("p-1"), found=None)
    step = PaymentStep(hot_uow, payments, saga)
    message_id = uuid.uuid4()

    assert await step.handle(command, _delivery(message_id)) == Handled.DONE

    assert (payments.calls, payments.lookups) == ([], [str(command.checkout_id)])
    assert await _state(engine, command) == ("FAILED", "FAILED", "FAILED", 1)
    assert (await _steps(engine, command))[-1][0] == "late_charge.none"
    assert await _refunds(engine, command) == (0, 0)
    assert await _deadlines(engine, command) == before  # the looks go on as they were
    # A copy of the same command (a duplicate, a dead-letter replay) finding nothing again
    # is a duplicate; one finding the charge landed meanwhile is not, and refunds it.
    assert await step.handle(command, _delivery(message_id, attempt=2)) == Handled.DUPLICATE
    payments.found = Charged("p-landed")
    assert await step.handle(command, _delivery(message_id, attempt=3)) == Handled.DONE
    assert await _state(engine, command) == ("FAILED", "SUCCESSFUL", "FAILED", 1)
    assert await _refunds(engine, command) == (1, 1)
    assert payments.calls == []


async def test_a_charge_command_of_a_failed_checkout_unanswered_looks_again_later(
    hot_uow: UnitOfWork, engine: AsyncEngine
) -> None:
    command = await pending_checkout(hot_uow)
    saga = CheckoutSaga(hot_uow)
    await saga.apply(PaymentDeclined(command.checkout_id, "card_declined"), uuid.uuid4())
    assert await _deadlines(engine, command) == []
    unreachable = TransientFailure("payments service answered 503: down")
    payments = FakePayments(Charged("p-1"), found=unreachable)
    step = PaymentStep(hot_uow, payments, saga)

    assert await step.handle(command, _delivery(uuid.uuid4())) == Handled.DONE

    assert payments.calls == []
    name, detail = (await _steps(engine, command))[-1]
    assert name == "late_charge.unanswered"
    assert "payments service answered 503: down" in str(detail)
    assert await _deadlines(engine, command) == [("late_charge", 0)]


async def test_a_charge_command_of_a_paid_checkout_neither_charges_nor_looks(
    hot_uow: UnitOfWork, engine: AsyncEngine
) -> None:
    command = await pending_checkout(hot_uow)
    saga = CheckoutSaga(hot_uow)
    await saga.apply(PaymentSucceeded(command.checkout_id, "p-1"), uuid.uuid4())
    payments = FakePayments(Charged("p-1"), found=Charged("p-1"))

    assert await PaymentStep(hot_uow, payments, saga).handle(command, _delivery(uuid.uuid4())) == (
        Handled.DONE
    )

    assert (payments.calls, payments.lookups) == ([], [])
    assert await _state(engine, command) == ("PAID", "SUCCESSFUL", "PAID", 1)


async def test_a_refunded_late_charge_heard_of_again_stays_refunded(
    hot_uow: UnitOfWork, engine: AsyncEngine
) -> None:
    command, saga = await _timed_out(hot_uow)
    await saga.apply(PaymentSucceeded(command.checkout_id, "p-late"), uuid.uuid4())
    async with engine.begin() as conn:  # the refund step's work, done
        await conn.execute(
            text("UPDATE payments SET status = 'REFUNDED' WHERE payment_id = :p"),
            {"p": command.payment_id},
        )
        await conn.execute(
            text("UPDATE refunds SET status = 'SUCCEEDED' WHERE payment_id = :p"),
            {"p": command.payment_id},
        )

    await saga.apply(PaymentSucceeded(command.checkout_id, "p-late"), uuid.uuid4())

    assert await _state(engine, command) == ("FAILED", "REFUNDED", "FAILED", 1)
    assert (await _refunds(engine, command))[0] == 1


async def _make_due(engine: AsyncEngine, command: ChargePayment) -> None:
    async with engine.begin() as conn:  # due now, not waited for
        await conn.execute(
            text("UPDATE deadlines SET due_at = now() WHERE saga_id = :c"),
            {"c": command.checkout_id},
        )


async def _fire(saga: CheckoutSaga, command: ChargePayment) -> str:
    [fired] = [a for a in await saga.fire_due() if a.checkout_id == command.checkout_id]
    assert fired.transition is not None
    return str(fired.transition.step.detail)


async def test_the_looks_for_a_late_charge_end_once_the_window_is_over(
    hot_uow: UnitOfWork, engine: AsyncEngine
) -> None:
    command = await pending_checkout(hot_uow)
    saga = CheckoutSaga(hot_uow, late_window=600.0)
    await saga.apply(PaymentNotFound(command.checkout_id), uuid.uuid4())
    for look in (1, 2, 3, 4):  # within the window: every look sets the next
        await _make_due(engine, command)
        assert f"(look {look}," in await _fire(saga, command)
        assert await _deadlines(engine, command) == [("late_charge", look)]

    # The window is over (the deadline was first set longer ago than it): the last look.
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE deadlines SET created_at = now() - interval '601 seconds'"
                " WHERE saga_id = :c"
            ),
            {"c": command.checkout_id},
        )
    await _make_due(engine, command)
    assert "the last: no charge on its way can land any more" in await _fire(saga, command)
    assert await _deadlines(engine, command) == []
    assert await outbox_count(engine, "ReconcilePayment", command.checkout_id) == 5


async def test_an_unanswered_last_look_for_a_late_charge_is_asked_again(
    hot_uow: UnitOfWork, engine: AsyncEngine
) -> None:
    command = await pending_checkout(hot_uow)
    unreachable = TransientFailure("payments service answered 503: down")
    payments = FakePayments(Charged("p-1"), found=unreachable)
    saga = CheckoutSaga(hot_uow, late_window=0.001)
    step = PaymentStep(hot_uow, payments, saga)
    await saga.apply(PaymentNotFound(command.checkout_id), uuid.uuid4())
    await _make_due(engine, command)
    assert "the last" in await _fire(saga, command)
    assert await _deadlines(engine, command) == []

    # The last look's question goes unanswered: it is asked again.
    assert await step.reconcile(_reconcile(command), _delivery(uuid.uuid4())) == Handled.DONE
    assert (await _steps(engine, command))[-1][0] == "late_charge.unanswered"
    assert await _deadlines(engine, command) == [("late_charge", 0)]

    # Answered at last, with the charge: refunded, and the looking ends.
    payments.found = Charged("p-landed")
    await _make_due(engine, command)
    await _fire(saga, command)
    assert await step.reconcile(_reconcile(command), _delivery(uuid.uuid4())) == Handled.DONE
    assert await _state(engine, command) == ("FAILED", "SUCCESSFUL", "FAILED", 1)
    assert await _refunds(engine, command) == (1, 1)
    assert await _deadlines(engine, command) == []
