"""The simulated Payment Service: `POST /payments`.

The amount's cents choose the behaviour: `.01` is declined (a 201 with status FAILED),
`.02` answers 503 to the first two requests with a key, `.03` makes the request that
takes the payment answer only after the app's slow delay (10 s by default).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated
from uuid import uuid4

from pydantic import BaseModel, ConfigDict, Field

from mock_services.outcomes import Outcome, flaky_failure
from mock_services.service import ServiceSpec
from mock_services.store import JsonObject

DECLINED_CENTS = 1
FLAKY_CENTS = 2
SLOW_CENTS = 3
FLAKY_FAILURES = 2

# A charge's or a refund's money, as the checkout system sends it.
Amount = Annotated[Decimal, Field(gt=0, decimal_places=2)]
Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$")]


class PaymentRequest(BaseModel):
    """A charge; the amount may be a string or a number. Extra fields are kept, unchecked."""

    model_config = ConfigDict(extra="allow")

    order_id: str = Field(min_length=1, max_length=200)
    amount: Amount
    currency: Currency


def cents(amount: Decimal) -> int:
    """`19.02` -> 2."""
    return int(amount * 100 % 100)


def decide(payment: PaymentRequest, attempts: int) -> Outcome:
    """Take the payment, decline it, or fail transiently, by the amount's cents."""
    behaviour = cents(payment.amount)
    if behaviour == FLAKY_CENTS and attempts <= FLAKY_FAILURES:
        return flaky_failure(attempts, FLAKY_FAILURES)
    if behaviour == DECLINED_CENTS:
        body = {"payment_id": str(uuid4()), "status": "FAILED", "reason": "card_declined"}
        return Outcome(201, body, "declined")
    body = {"payment_id": str(uuid4()), "status": "SUCCESSFUL"}
    return Outcome(201, body, "succeeded", slow=behaviour == SLOW_CENTS)


def describe(request: JsonObject) -> dict[str, object]:
    """Order and amount of a recorded payment request, for the log."""
    return {"order_id": request.get("order_id"), "amount": request.get("amount")}


PAYMENTS = ServiceSpec(
    name="payments",
    path="/payments",
    inspect_path="/mock/payments",
    outage_path="/mock/payments/outage",
    success_status=201,
    model=PaymentRequest,
    decide=decide,
    describe=describe,
)
