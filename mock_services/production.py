"""The simulated Production Service: orders to make, and their cancellation.

- `POST /production/orders` receives an order (201), unless the order was cancelled
  before it arrived: 409 `{"reason": "cancelled"}`.
- `POST /production/orders/{order_id}/cancel` cancels it (200 `{"status": "CANCELLED"}`),
  unless it is already being made: an order whose amount (known from its submission)
  ends `.06` answers 409 `{"reason": "already_in_production"}`. An order never submitted
  has no amount: its cancellation succeeds and is remembered, so that its submission,
  should it come later, is refused.

What the service knows is what its two records hold (the stored answers), so a reset
forgets it with them. Deciding never awaits, so a submission and a cancellation of one
order cannot interleave: whichever comes first is what the other sees.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from uuid import uuid4

from pydantic import BaseModel, ConfigDict, Field

from mock_services.outcomes import Outcome, problem
from mock_services.payments import cents
from mock_services.service import ServiceSpec
from mock_services.store import EffectStore, JsonObject

IN_PRODUCTION_CENTS = 6
RECEIVED, CANCELLED, CONFLICT = 201, 200, 409


class ProductionOrderRequest(BaseModel):
    """An order for production; any further fields are kept, unchecked."""

    model_config = ConfigDict(extra="allow")

    order_id: str = Field(min_length=1, max_length=200)
    order_name: str = Field(min_length=1, max_length=200)


class CancelRequest(BaseModel):
    """A cancellation; the order id comes from the path, any body fields are kept."""

    model_config = ConfigDict(extra="allow")

    order_id: str = Field(min_length=1, max_length=200)


def _conflict(reason: str, detail: str) -> Outcome:
    """A final 409 whose body says why in `reason` (and is a problem body as well)."""
    title = "Order already in production" if reason == "already_in_production" else "Cancelled"
    body = problem(409, reason.replace("_", "-"), title, detail, reason=reason)
    return Outcome(CONFLICT, body, reason)


def _in_production(amount: object) -> bool:
    try:
        return cents(Decimal(str(amount))) == IN_PRODUCTION_CENTS
    except (InvalidOperation, ValueError):
        return False


class ProductionFloor:
    """The two records of one Production Service and the rules that join them."""

    def __init__(self) -> None:
        self.orders = EffectStore()
        self.cancellations = EffectStore(self.orders.switch)  # one service, one switch

    def receive(self, order: ProductionOrderRequest, attempts: int) -> Outcome:
        """Receive the order, unless it was cancelled first."""
        if self.cancellations.answered(CANCELLED, order_id=order.order_id):
            return _conflict(
                "cancelled", f"order {order.order_id} was cancelled before it was submitted"
            )
        body = {"production_order_id": str(uuid4()), "status": "RECEIVED"}
        return Outcome(RECEIVED, body, "received")

    def cancel(self, request: CancelRequest, attempts: int) -> Outcome:
        """Cancel the order, unless it is in production (a submitted `.06` amount)."""
        submitted = self.orders.answered(RECEIVED, order_id=request.order_id)
        if any(_in_production(entry.request.get("amount")) for entry in submitted):
            return _conflict(
                "already_in_production", f"order {request.order_id} is already being made"
            )
        label = "cancelled" if submitted else "cancelled_before_submission"
        return Outcome(CANCELLED, {"status": "CANCELLED"}, label)

    def specs(
        self,
    ) -> tuple[ServiceSpec[ProductionOrderRequest], ServiceSpec[CancelRequest]]:
        """The two services, deciding with this floor's records."""
        orders = ServiceSpec(
            name="production",
            path="/production/orders",
            inspect_path="/mock/production/orders",
            outage_path="/mock/production/outage",
            success_status=RECEIVED,
            model=ProductionOrderRequest,
            decide=self.receive,
            describe=describe,
        )
        cancellations = ServiceSpec(
            name="production_cancellations",
            path="/production/orders/{order_id}/cancel",
            inspect_path="/mock/production/cancellations",
            outage_path=None,  # the production switch covers it
            success_status=CANCELLED,
            model=CancelRequest,
            decide=self.cancel,
            describe=describe,
        )
        return orders, cancellations


def describe(request: JsonObject) -> dict[str, object]:
    """The order id of a recorded request, for the log."""
    return {"order_id": request.get("order_id")}
