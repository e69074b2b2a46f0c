"""Money in requests and responses.

A request may send an amount as a JSON string (`"19.99"`) or number (`19.99`). Numbers
go through `Decimal(str(value))`, so `19.99` is exactly 19.99 and a float that is not
(0.1 + 0.2) shows its extra digits and is refused. Responses always carry a string
with two places (`contracts.Money`).
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

from pydantic import PlainValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

from contracts import Money
from contracts.events import CENT, MAX_AMOUNT, money_problem

# Plain decimal notation only: no exponent, no "_" separators, no non-ASCII digits,
# all of which Decimal() would otherwise accept.
_DECIMAL_TEXT = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)", re.ASCII)
# What the OpenAPI document promises a string amount looks like, and what the validator
# therefore accepts (anything else is 422 with the reason): digits, a point and one or
# two decimals (trailing zeros aside: "19.990" is 19.99), positive, at most MAX_AMOUNT.
# A lookahead-free regex, so that generators of test data (schemathesis) can produce it.
AMOUNT_PATTERN = r"^(0*[1-9]\d{0,9}(\.\d{1,2}0*)?|0+\.(0[1-9]|[1-9]\d?)0*)$"


def _error(message: str) -> PydanticCustomError:
    return PydanticCustomError("money", message)


def _to_decimal(value: Any) -> Decimal:
    if isinstance(value, bool):  # bool is an int; true is not an amount
        raise _error('must be a decimal number, e.g. "19.99"')
    if isinstance(value, Decimal):
        return value
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(str(value))
    if isinstance(value, str) and _DECIMAL_TEXT.fullmatch(value):
        try:
            return Decimal(value)
        except InvalidOperation:  # pragma: no cover - the pattern admits only valid text
            pass
    raise _error('must be a decimal number, e.g. "19.99"')


def parse_amount(value: Any) -> Decimal:
    """A positive amount with at most two decimal places, quantised to cents."""
    amount = _to_decimal(value)
    problem = money_problem(amount)
    if problem is not None:
        raise _error(problem)
    if isinstance(value, str) and not re.fullmatch(AMOUNT_PATTERN, value):
        # A right amount spelt otherwise ("+5", "5.", ".5"): the document's pattern rules.
        raise _error('must be written as digits with up to two decimals, e.g. "19.99"')
    return amount.quantize(CENT)


AmountIn = Annotated[
    Decimal,
    PlainValidator(parse_amount),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": AMOUNT_PATTERN},
                {
                    "type": "number",
                    "exclusiveMinimum": 0,
                    "maximum": float(MAX_AMOUNT),
                    "multipleOf": 0.01,
                },
            ],
            "description": "Positive, at most two decimal places; a string avoids float rounding",
            "examples": ["19.99"],
        },
        mode="validation",
    ),
]
"""A request amount (string or number)."""

MoneyOut = Annotated[
    Money,
    WithJsonSchema(
        {"type": "string", "pattern": r"^\d+\.\d{2}$", "examples": ["19.99"]},
        mode="serialization",
    ),
]
"""A response amount: a string with two places."""
