"""The Payment Service over REST: a charge is either taken or declined (a business outcome)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from decimal import Decimal
from urllib.parse import quote

from infra.http import ServiceClient
from infra.messaging.failures import PermanentFailure


@dataclass(frozen=True)
class Charged:
    provider_payment_id: str
    attempts: int = 1


@dataclass(frozen=True)
class Declined:
    reason: str
    attempts: int = 1


class PaymentClient:
    """`POST /payments` with the checkout as the idempotency key: a repeat never charges twice."""

    def __init__(self, service: ServiceClient) -> None:
        self._service = service

    async def charge(
        self, *, order_id: uuid.UUID, amount: Decimal, currency: str, idempotency_key: str
    ) -> Charged | Declined:
        body, attempts = await self._service.post_counted(
            "/payments",
            {"order_id": str(order_id), "amount": f"{amount:.2f}", "currency": currency},
            idempotency_key=idempotency_key,
        )
        return _outcome(body, attempts)

    async def find(self, idempotency_key: str) -> Charged | Declined | None:
        """`GET /payments/{key}`: the charge made with the key, None if none was made
        (a charge still in flight is not found yet). Unreachable: TransientFailure."""
        body = await self._service.get_or_none(f"/payments/{quote(idempotency_key, safe='')}")
        return None if body is None else _outcome(body, 1)


def _outcome(body: object, attempts: int) -> Charged | Declined:
    match body:
        case {"status": "SUCCESSFUL", "payment_id": str(reference)}:
            return Charged(reference, attempts)
        case {"status": "FAILED", **rest}:
            return Declined(str(rest.get("reason") or "declined"), attempts)
        case _:
            raise PermanentFailure(f"payment service answered an unknown body: {body!r}")
