"""`GET /payments/{idempotency_key}`: what became of the charge made with a key.

200 with the stored result of the charge (`{payment_id, status[, reason]}`), or 404 if
no charge was made with that key. A charge counts as made once its answer has been
sent: a slow charge still in flight is 404 (the way a real provider's lookup lags its
own processing). The outage switch and random failures answer 503 here too.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from mock_services.outcomes import Outcome, problem, unavailable
from mock_services.routes import respond
from mock_services.service import MockService


def lookup(service: MockService[Any], key: str) -> Outcome:
    """The answer to a lookup of `key` at `service`."""
    if service.store.down:
        return unavailable(f"{service.spec.name} is down (outage switch on)", "outage")
    if service.chaos.strikes():
        return unavailable("simulated random failure", "random_failure")
    entry = service.store.find(key)
    if entry is None or entry.final is None or not entry.answered or entry.final[0] >= 300:
        detail = f"no payment was made with Idempotency-Key {key!r}"
        return Outcome(404, problem(404, "not-found", "Not found", detail), "not_found")
    return Outcome(200, entry.final[1], "found")


def payment_lookup_router(service: MockService[Any]) -> APIRouter:
    """The lookup route of the payments service."""
    router = APIRouter(tags=[service.spec.name])

    @router.get(f"{service.spec.path}/{{idempotency_key}}", name=f"{service.spec.name}:lookup")
    async def find(idempotency_key: str) -> Response:
        """The stored result of the charge made with this key; 404 if none was made (yet)."""
        return respond(lookup(service, idempotency_key))

    return router
