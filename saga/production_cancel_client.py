"""The Production Service's order cancellation over REST: the cancellation saga's pivot.

`POST /production/orders/{order_id}/cancel` answers 200 `{"status": "CANCELLED"}`
(also for an order it has not seen yet: it then refuses its later submission), or
409 `{"reason": "already_in_production"}`: a business outcome, the one step of the
cancellation allowed to say no. Transient failures raise as for any service call.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from infra.http import ServiceClient, ServiceRefused
from infra.messaging.failures import PermanentFailure

CONFLICT = 409


@dataclass(frozen=True)
class Released:
    """Production let the order go."""

    attempts: int = 1


@dataclass(frozen=True)
class Refused:
    """Production refused: the order is already being made."""

    reason: str


class ProductionCancelClient:
    """Cancels a production order, Idempotency-Key = the cancellation."""

    def __init__(self, service: ServiceClient) -> None:
        self._service = service

    async def cancel(self, *, order_id: uuid.UUID, idempotency_key: str) -> Released | Refused:
        try:
            body, attempts = await self._service.post_counted(
                f"/production/orders/{order_id}/cancel",
                {},
                idempotency_key=idempotency_key,
            )
        except ServiceRefused as refused:
            if refused.status != CONFLICT:
                raise
            return Refused(refused.reason or "conflict")
        match body:
            case {"status": "CANCELLED"}:
                return Released(attempts)
            case _:
                raise PermanentFailure(f"production service answered an unknown body: {body!r}")
