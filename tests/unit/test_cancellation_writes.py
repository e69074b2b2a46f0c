"""What each cancellation transition writes (`saga.cancellation_writes`): pure, no I/O."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from infra.messaging.failures import PermanentFailure
from saga.cancellation_state_machine import (
    CancellationState,
    CheckoutEnded,
    DeadlineFired,
    OrderSituation,
    ProductionCancelled,
    ProductionRefused,
    RefundSucceeded,
    Requested,
    decide,
)
from saga.cancellation_writes import Cancelling, Payment, RefundRow, transition_writes

S = CancellationState
NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
PAYMENT = Payment(uuid.uuid4(), uuid.uuid4(), "pay-1", Decimal("19.99"), "EUR")
REFUND = RefundRow(uuid.uuid4(), Decimal("19.99"), "EUR")


def cancelling(state: S, *, paid: bool = True, refund: bool = False) -> Cancelling:
    return Cancelling(
        uuid.uuid4(),
        uuid.uuid4(),
        "changed my mind",
        str(state),
        PAYMENT if paid else None,
        REFUND if refund else None,
    )


def outbox(writes: list[tuple[str, tuple[object, ...]]]) -> list[tuple[str, dict[str, object]]]:
    """(message type, body) of each outbox row among the writes."""
    rows = [params for sql, params in writes if sql.startswith("INSERT INTO outbox")]
    return [(str(p[3]), json.loads(str(p[6]))) for p in rows]


def test_an_unpaid_order_is_cancelled_with_no_refund() -> None:
    c = cancelling(S.REQUESTED, paid=False)
    transition = decide(S.REQUESTED, Requested(OrderSituation.UNPAID))
    writes = transition_writes(transition, c, NOW, inserted=True)
    assert [t for t, _ in outbox(writes)] == ["OrderCancelled"]
    assert outbox(writes)[0][1]["refund"] is None
    assert any(sql.startswith("UPDATE orders SET status = 'CANCELLED'") for sql, _ in writes)
    # Inserted in its new state: no state update of its own.
    assert not any(sql.startswith("UPDATE cancellations") for sql, _ in writes)


def test_a_paid_order_first_asks_production() -> None:
    c = cancelling(S.WAITING_FOR_CHECKOUT)
    writes = transition_writes(decide(S.WAITING_FOR_CHECKOUT, CheckoutEnded(paid=True)), c, NOW)
    [(kind, body)] = outbox(writes)
    assert kind == "CancelProductionOrder"
    assert body == {"cancellation_id": str(c.cancellation_id), "order_id": str(c.order_id)}
    assert any(sql.startswith("UPDATE cancellations") for sql, _ in writes)


def test_production_letting_go_records_the_refund_and_commands_it_keyed_by_the_cancellation() -> (
    None
):
    c = cancelling(S.CANCELLING_PRODUCTION)
    writes = transition_writes(decide(S.CANCELLING_PRODUCTION, ProductionCancelled()), c, NOW)
    [(kind, body)] = outbox(writes)
    assert kind == "RefundPayment"
    assert body["idempotency_key"] == str(c.cancellation_id)
    assert body["provider_payment_id"] == "pay-1"
    assert body["amount"] == "19.99"
    [refund_row] = [p for sql, p in writes if sql.startswith("INSERT INTO refunds")]
    assert str(refund_row[0]) == body["refund_id"]


def test_a_refusal_publishes_the_rejection_and_touches_nothing_else() -> None:
    c = cancelling(S.CANCELLING_PRODUCTION)
    transition = decide(S.CANCELLING_PRODUCTION, ProductionRefused("already_in_production"))
    writes = transition_writes(transition, c, NOW)
    assert [t for t, _ in outbox(writes)] == ["OrderCancellationRejected"]
    assert outbox(writes)[0][1]["reason"] == "already_in_production"
    touched = {sql.split()[1] if sql.startswith("UPDATE") else sql.split()[2] for sql, _ in writes}
    assert touched == {"cancellations", "cancellation_steps", "outbox"}


def test_the_refund_completes_the_payment_then_cancels_the_order_with_it() -> None:
    c = cancelling(S.REFUNDING, refund=True)
    writes = transition_writes(decide(S.REFUNDING, RefundSucceeded("ref-9")), c, NOW)
    kinds = outbox(writes)
    assert [t for t, _ in kinds] == ["OrderPaymentRefunded", "OrderCancelled"]
    assert kinds[1][1]["refund"] == {
        "refund_id": str(REFUND.refund_id),
        "amount": "19.99",
        "currency": "EUR",
    }
    assert any("payments SET status = 'REFUNDED'" in sql for sql, _ in writes)


def test_a_deadline_resends_the_recorded_refund_with_the_same_key() -> None:
    c = cancelling(S.REFUNDING, refund=True)
    writes = transition_writes(decide(S.REFUNDING, DeadlineFired("step")), c, NOW)
    [(kind, body)] = outbox(writes)
    assert (kind, body["refund_id"]) == ("RefundPayment", str(REFUND.refund_id))
    assert not any(sql.startswith("INSERT INTO refunds") for sql, _ in writes)


@pytest.mark.parametrize(
    ("state", "message", "paid", "refund"),
    [
        (S.CANCELLING_PRODUCTION, ProductionCancelled(), False, False),  # nothing charged
        (S.REFUNDING, RefundSucceeded("r"), True, False),  # no refund recorded
    ],
)
def test_a_refund_without_its_charge_or_record_is_refused(
    state: S, message: ProductionCancelled | RefundSucceeded, paid: bool, refund: bool
) -> None:
    with pytest.raises(PermanentFailure):
        transition_writes(decide(state, message), cancelling(state, paid=paid, refund=refund), NOW)
