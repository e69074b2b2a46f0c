"""The simulated Production Service: `POST /production/orders` records an order to make."""

from __future__ import annotations

from uuid import uuid4

from pydantic import BaseModel, ConfigDict, Field

from mock_services.outcomes import Outcome
from mock_services.service import ServiceSpec
from mock_services.store import JsonObject


class ProductionOrderRequest(BaseModel):
    """An order for production; any further fields are kept, unchecked."""

    model_config = ConfigDict(extra="allow")

    order_id: str = Field(min_length=1, max_length=200)
    order_name: str = Field(min_length=1, max_length=200)


def decide(order: ProductionOrderRequest, attempts: int) -> Outcome:
    """Receive the order."""
    body = {"production_order_id": str(uuid4()), "status": "RECEIVED"}
    return Outcome(201, body, "received")


def describe(request: JsonObject) -> dict[str, object]:
    """The order id of a recorded request, for the log."""
    return {"order_id": request.get("order_id")}


PRODUCTION = ServiceSpec(
    name="production",
    path="/production/orders",
    inspect_path="/mock/production/orders",
    outage_path="/mock/production/outage",
    success_status=201,
    model=ProductionOrderRequest,
    decide=decide,
    describe=describe,
)
