"""The compensation's public events: their bodies, keys, versions and exchange."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from pydantic import ValidationError

import contracts
from contracts import (
    PUBLIC_EVENTS,
    CancellationRefund,
    OrderCancellationRejected,
    OrderCancelled,
    OrderPaymentRefunded,
    PublicEvent,
)
from contracts.schema import schema_file_name
from infra.messaging.outbox import exchange_for

DOCS = Path(__file__).resolve().parents[2] / "docs"
NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def cancelled(refund: CancellationRefund | None) -> OrderCancelled:
    return OrderCancelled(
        order_id=uuid4(),
        cancellation_id=uuid4(),
        reason="changed my mind",
        refund=refund,
        cancelled_at=NOW,
    )


def rejected() -> OrderCancellationRejected:
    return OrderCancellationRejected(
        order_id=uuid4(),
        cancellation_id=uuid4(),
        reason="already_in_production",
        rejected_at=NOW,
    )


def refunded() -> OrderPaymentRefunded:
    return OrderPaymentRefunded(
        order_id=uuid4(),
        checkout_id=uuid4(),
        payment_id=uuid4(),
        refund_id=uuid4(),
        amount=Decimal("19.9"),
        currency="EUR",
        reason="changed my mind",
        refunded_at=NOW,
    )


def schema_of(event: PublicEvent) -> dict[str, Any]:
    path = DOCS / "schemas" / schema_file_name(type(event))
    result: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return result


@pytest.mark.parametrize(
    ("event", "routing_key"),
    [
        (cancelled(None), "order.cancelled"),
        (rejected(), "order.cancellation_rejected"),
        (refunded(), "order.payment_refunded"),
    ],
)
def test_each_new_event_is_public_versioned_and_routed(
    event: PublicEvent, routing_key: str
) -> None:
    assert type(event) in PUBLIC_EVENTS
    assert type(event).__name__ in contracts.__all__
    assert event.routing_key == routing_key
    assert event.schema_version == 1
    assert exchange_for(event) == "orders"
    schema = schema_of(event)
    body = json.loads(event.model_dump_json())
    assert set(body) == set(schema["properties"])
    assert set(schema["required"]) == set(body)  # every field present, even when null
    assert schema["x-routing-key"] == routing_key


def test_an_order_cancelled_without_a_charge_says_refund_null() -> None:
    body = json.loads(cancelled(None).model_dump_json())
    assert body["refund"] is None
    assert body["reason"] == "changed my mind"


def test_an_order_cancelled_with_its_refund_carries_the_amount_as_a_string() -> None:
    refund = CancellationRefund(refund_id=uuid4(), amount=Decimal("19.9"), currency="EUR")
    body = json.loads(cancelled(refund).model_dump_json())
    assert body["refund"] == {
        "refund_id": str(refund.refund_id),
        "amount": "19.90",
        "currency": "EUR",
    }
    nested = schema_of(cancelled(refund))["$defs"]["CancellationRefund"]
    assert set(nested["properties"]) == set(body["refund"])


def test_a_refund_event_carries_the_amount_as_a_string() -> None:
    body = json.loads(refunded().model_dump_json())
    assert body["amount"] == "19.90"


@pytest.mark.parametrize(
    ("event", "field"),
    [
        (cancelled(None), "cancellation_id"),
        (rejected(), "cancellation_id"),
        (refunded(), "checkout_id"),
    ],
)
def test_the_correlation_id_is_the_saga_the_event_belongs_to(
    event: PublicEvent, field: str
) -> None:
    assert event.correlation_field == field
    assert event.correlation_id() == getattr(event, field)


def test_an_order_cancelled_must_say_whether_there_was_a_refund() -> None:
    with pytest.raises(ValidationError, match="refund"):
        OrderCancelled.model_validate(
            {
                "order_id": str(uuid4()),
                "cancellation_id": str(uuid4()),
                "reason": "x",
                "cancelled_at": NOW.isoformat(),
            }
        )


def test_the_internal_messages_stay_internal() -> None:
    cancel = contracts.CancelProductionOrder(cancellation_id=uuid4(), order_id=uuid4())
    assert exchange_for(cancel) == "internal"
