"""`GET /checkouts/{checkout_id}/timeline`: every hop of one checkout, in time order.

The JSON document of `checkout trace CHECKOUT_ID --json --no-broker`: the API reads
the database only, never the broker, so the dead-letter queues are reported as not
read (`dead_letter_queues.read` is false); a dead-lettering the consumer recorded
is in the entries all the same.
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter
from structlog.contextvars import bind_contextvars

from checkout_api.deps import UowDep
from checkout_api.routes.docs import problems
from checkout_api.usecases.errors import CheckoutNotFound
from operations.timeline.query import trace
from operations.timeline.render import trace_json

router = APIRouter(tags=["checkouts"])


@router.get("/checkouts/{checkout_id}/timeline", responses=problems(404, 422))
async def get_checkout_timeline(checkout_id: uuid.UUID, uow: UowDep) -> dict[str, Any]:
    """The checkout's timeline: the request, publishes, transitions, payment attempts,
    each consumer's processing, retries, dead letters and replays, with offsets."""
    bind_contextvars(checkout_id=str(checkout_id))
    async with uow() as session:
        found = await trace(await session.connection(), checkout_id)
    # An order's id is not a checkout's: this resource is one checkout.
    if found is None or found.target != "checkout":
        raise CheckoutNotFound(checkout_id)
    return trace_json(found)
