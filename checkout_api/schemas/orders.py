"""Orders: the body of `POST /orders` and the Order representation."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from checkout_api.schemas.currency import Currency
from checkout_api.schemas.email import Email
from checkout_api.schemas.money import AmountIn, MoneyOut

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
"""1-200 characters after surrounding white space is removed."""

OrderStatus = Literal["PENDING", "PAID", "FAILED"]


class CustomerIn(BaseModel):
    """Who the order is for."""

    email: Email
    name: Name


class CreateOrder(BaseModel):
    """A new order; it starts PENDING."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "order_name": "Poster A2",
                    "amount": "19.99",
                    "currency": "USD",
                    "customer": {"email": "jane@example.com", "name": "Jane Doe"},
                }
            ]
        }
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
    status: Literal["PENDING", "SUCCESSFUL", "FAILED"]
    amount: MoneyOut


class InvoiceSummary(BaseModel):
    """The order's invoice, once the invoice consumer has written it."""

    invoice_id: UUID
    status: Literal["CREATED", "SENT", "FAILED"]
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
