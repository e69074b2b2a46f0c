"""The simulated Payment Service's refunds: `POST /refunds`.

A refund returns a payment (in full, as the checkout system uses it). The amount's
cents choose the behaviour like a charge's: `.05` answers 503 to the first two requests
with a key, then succeeds. The mock does not check the payment against its charges: the
fault suite's checker compares `GET /mock/refunds` with `GET /mock/payments`, which
finds a refund of what was never charged wherever it came from.

Refunds belong to the payment system: the payments' outage switch covers them.
"""

from __future__ import annotations

from uuid import uuid4

from pydantic import BaseModel, ConfigDict, Field

from mock_services.outcomes import Outcome, flaky_failure
from mock_services.payments import Amount, Currency, cents
from mock_services.service import ServiceSpec
from mock_services.store import JsonObject

FLAKY_CENTS = 5
FLAKY_FAILURES = 2


class RefundRequest(BaseModel):
    """A refund of one payment; the amount may be a string or a number."""

    model_config = ConfigDict(extra="allow")

    payment_id: str = Field(min_length=1, max_length=200)
    amount: Amount
    currency: Currency
    reason: str = Field(min_length=1, max_length=1000)


def decide(refund: RefundRequest, attempts: int) -> Outcome:
    """Refund, or fail transiently for a `.05` amount's first two requests."""
    if cents(refund.amount) == FLAKY_CENTS and attempts <= FLAKY_FAILURES:
        return flaky_failure(attempts, FLAKY_FAILURES)
    return Outcome(201, {"refund_id": str(uuid4()), "status": "SUCCEEDED"}, "refunded")


def describe(request: JsonObject) -> dict[str, object]:
    """Payment and amount of a recorded refund request, for the log."""
    return {"payment_id": request.get("payment_id"), "amount": request.get("amount")}


REFUNDS = ServiceSpec(
    name="refunds",
    path="/refunds",
    inspect_path="/mock/refunds",
    outage_path=None,  # the payments' switch: one Payment Service
    success_status=201,
    model=RefundRequest,
    decide=decide,
    describe=describe,
)
