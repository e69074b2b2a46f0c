"""Customer e-mail addresses: syntax only, no DNS, and reserved test domains allowed.

pydantic's `EmailStr` refuses special-use domains (`.test`, ...), which tests and demos
use; `email_validator` with `test_environment=True` accepts them and never queries DNS.
"""

from __future__ import annotations

from typing import Annotated, Any

from email_validator import EmailNotValidError, validate_email
from pydantic import BeforeValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

MAX_EMAIL_LENGTH = 320  # orders.customer_email


def parse_email(value: Any) -> str:
    """Return the normalised address (domain lower-cased), or raise naming the problem."""
    if not isinstance(value, str):
        raise PydanticCustomError("email", "must be an e-mail address")
    if len(value) > MAX_EMAIL_LENGTH:
        raise PydanticCustomError("email", "must be an e-mail address of at most 320 characters")
    try:
        checked = validate_email(value, check_deliverability=False, test_environment=True)
    except EmailNotValidError as exc:
        raise PydanticCustomError(
            "email", "must be an e-mail address: {reason}", {"reason": str(exc)}
        ) from None
    return checked.normalized


Email = Annotated[
    str,
    BeforeValidator(parse_email),
    WithJsonSchema(
        {"type": "string", "format": "email", "examples": ["jane@example.com"]}, mode="validation"
    ),
]
"""A customer's e-mail address."""
