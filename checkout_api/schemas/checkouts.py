"""The Checkout representation."""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from uuid import UUID

from pydantic import BaseModel

CheckoutState = Literal["STARTED", "PAYMENT_PENDING", "PAID", "FAILED"]


class StepOut(BaseModel):
    """One recorded step of the checkout saga."""

    name: str
    status: str
    at: datetime
    detail: str | None


class CheckoutOut(BaseModel):
    """A checkout and its steps in the order they happened. PAID and FAILED are final."""

    checkout_id: UUID
    order_id: UUID
    state: CheckoutState
    failure_reason: str | None
    steps: list[StepOut]
    created_at: datetime
    updated_at: datetime
