"""Cancellations: the body of `POST /orders/{order_id}/cancel` and the Cancellation."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, PlainValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

from checkout_api.schemas.checkouts import StepOut
from checkout_api.schemas.money import MoneyOut

MAX_REASON = 500


def parse_reason(value: object) -> str:
    """1-500 characters, not only white space, no NUL; kept without surrounding space."""
    if not isinstance(value, str):
        raise PydanticCustomError("reason", "must be a string")
    if not 1 <= len(value) <= MAX_REASON:
        raise PydanticCustomError("reason", f"must be 1 to {MAX_REASON} characters")
    if "\x00" in value:
        raise PydanticCustomError("reason", "must not contain NUL characters")
    if value.isspace():
        raise PydanticCustomError("reason", "must not be only white space")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise PydanticCustomError("reason", "must be valid Unicode text") from None
    return value.strip()


Reason = Annotated[
    str,
    PlainValidator(parse_reason),
    WithJsonSchema(
        {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_REASON,
            "allOf": [{"pattern": "\\S"}, {"pattern": "^[^\\u0000]*$"}],
        },
        mode="validation",
    ),
]

CancellationState = Literal[
    "REQUESTED",
    "WAITING_FOR_CHECKOUT",
    "CANCELLING_PRODUCTION",
    "REFUNDING",
    "CANCELLED",
    "REJECTED",
]


class CancelOrder(BaseModel):
    """Why the order is cancelled."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"reason": "customer changed their mind"}]},
    )

    reason: Reason


class RefundOut(BaseModel):
    """The refund of the order's payment, once the cancellation asked for it."""

    refund_id: UUID
    status: Literal["PENDING", "SUCCEEDED"]
    amount: MoneyOut


class CancellationOut(BaseModel):
    """A cancellation and its steps in the order they happened. CANCELLED and REJECTED
    are final."""

    cancellation_id: UUID
    order_id: UUID
    reason: str
    state: CancellationState
    rejection_reason: str | None
    refund: RefundOut | None
    steps: list[StepOut]
    created_at: datetime
    updated_at: datetime
