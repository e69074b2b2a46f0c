"""Orders: the body of `POST /orders` and the Order representation."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

from checkout_api.schemas.currency import Currency
from checkout_api.schemas.email import Email
from checkout_api.schemas.money import AmountIn, MoneyOut

MAX_NAME = 200


def parse_name(value: object) -> str:
    """1-200 characters, not all white space, no NUL (PostgreSQL text cannot hold one),
    valid Unicode; stored without surrounding white space."""
    if not isinstance(value, str):
        raise PydanticCustomError("name", "must be a string")
    if not 1 <= len(value) <= MAX_NAME:
        raise PydanticCustomError("name", f"must be 1 to {MAX_NAME} characters")
    if "\x00" in value:
        raise PydanticCustomError("name", "must not contain NUL characters")
    if value.isspace():
        raise PydanticCustomError("name", "must not be only white space")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise PydanticCustomError("name", "must be valid Unicode text") from None
    return value.strip()


Name = Annotated[
    str,
    PlainValidator(parse_name),
    WithJsonSchema(
        {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_NAME,
            # Both must hold: some character that is not white space, and no NUL.
            "allOf": [{"pattern": "\\S"}, {"pattern": "^[^\\u0000]*$"}],
        },
        mode="validation",
    ),
]
"""1-200 characters, not only white space; surrounding white space is removed."""

OrderStatus = Literal["PENDING", "PAID", "FAILED", "CANCELLED"]


class CustomerIn(BaseModel):
    """Who the order is for."""

    model_config = ConfigDict(extra="forbid")

    email: Email
    name: Name


class CreateOrder(BaseModel):
    """A new order; it starts PENDING."""

    model_config = ConfigDict(
        extra="forbid",  # a misspelt field is an error, not silently dropped
        json_schema_extra={
            "examples": [
                {
                    "order_name": "Poster A2",
                    "amount": "19.99",
                    "currency": "USD",
                    "customer": {"email": "jane@example.com", "name": "Jane Doe"},
                }
            ]
        },
    )

    order_name: Name
    amount: AmountIn
    currency: Currency = "USD"
    customer: CustomerIn


class Customer(BaseModel):
    email: str
    name: str


class PaymentSummary(BaseModel):
    """The order's most recent payment."""

    payment_id: UUID
    status: Literal["PENDING", "SUCCESSFUL", "FAILED", "REFUNDED"]
    amount: MoneyOut


class InvoiceSummary(BaseModel):
    """The order's invoice, once the invoice consumer has written it."""

    invoice_id: UUID
    status: Literal["CREATED", "SENT", "FAILED", "VOIDED"]
    amount: MoneyOut


class OrderOut(BaseModel):
    """An order with its latest payment and its invoice."""

    order_id: UUID
    order_name: str
    amount: MoneyOut
    currency: str
    customer: Customer
    status: OrderStatus
    created_at: datetime
    updated_at: datetime
    payment: PaymentSummary | None
    invoice: InvoiceSummary | None


class OrderPage(BaseModel):
    """One page of a search, newest first."""

    items: list[OrderOut]
    next_cursor: str | None = Field(
        description="Pass as `cursor` to get the next page; null on the last page"
    )
