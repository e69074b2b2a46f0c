"""The Payment Service's refunds over REST: a refund is taken or the call fails (and is retried).

A refund has no business refusal: the charge it returns was taken, so the service can
only say yes, or fail (transient: retried, then the dead-letter queue until an
operator replays it). The idempotency key makes every repetition harmless.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from infra.http import ServiceClient
from infra.messaging.failures import PermanentFailure


@dataclass(frozen=True)
class Refunded:
    provider_refund_id: str
    attempts: int = 1


class RefundClient:
    """`POST /refunds`, Idempotency-Key = the cancellation (or the late charge's refund)."""

    def __init__(self, service: ServiceClient) -> None:
        self._service = service

    async def refund(
        self,
        *,
        provider_payment_id: str,
        amount: Decimal,
        currency: str,
        reason: str,
        idempotency_key: str,
    ) -> Refunded:
        body, attempts = await self._service.post_counted(
            "/refunds",
            {
                "payment_id": provider_payment_id,
                "amount": f"{amount:.2f}",
                "currency": currency,
                "reason": reason,
            },
            idempotency_key=idempotency_key,
        )
        match body:
            case {"status": "SUCCEEDED", "refund_id": str(reference)}:
                return Refunded(reference, attempts)
            case _:
                raise PermanentFailure(f"payment service answered an unknown refund body: {body!r}")
