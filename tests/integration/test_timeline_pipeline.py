"""`checkout trace` on real checkouts: the whole system in this process (API, relay,
saga with the payment step, the three consumers; the simulated services on a free
port), as in `test_pipeline.py`.

A paid order, a declined one, and one whose production message is dead-lettered
while the Production Service is down, then replayed. What the parts record with
`infra.timeline.record` is in the timeline too; these tests assert on what is there
in any case (steps, effects, dead letters, replays) and on the order of it all.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import aio_pika
import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from infra.db.session import UnitOfWork
from infra.messaging.topology import Topology
from operations.dlq.operations import replay_recorded
from operations.dlq.selection import Selection
from operations.timeline.merge import Trace
from operations.timeline.query import trace as load_trace
from operations.timeline.render import trace_json
from tests.support.pipeline import Pipeline
from tests.support.polling import eventually

pytestmark = pytest.mark.integration


@dataclass
class System:
    api: httpx.AsyncClient
    mocks: httpx.AsyncClient
    engine: AsyncEngine
    rabbit: aio_pika.abc.AbstractRobustConnection
    topology: Topology

    async def checkout(self, amount: str) -> tuple[str, str]:
        """Create an order, check it out; (order_id, checkout_id)."""
        response = await self.api.post(
            "/orders",
            json={
                "order_name": f"Traced poster {uuid.uuid4().hex[:6]}",
                "amount": amount,
                "currency": "EUR",
                "customer": {"email": "jane@example.com", "name": "Jane"},
            },
        )
        assert response.status_code == 201, response.text
        order_id = response.json()["order_id"]
        started = await self.api.post(
            f"/orders/{order_id}/checkout", headers={"Idempotency-Key": f"k-{order_id}"}
        )
        assert started.status_code == 202, started.text
        return order_id, started.json()["checkout_id"]

    async def trace(self, target: str) -> Trace:
        async with self.engine.connect() as conn:
            found = await load_trace(
                conn, uuid.UUID(target), rabbit=self.rabbit, topology=self.topology
            )
        assert found is not None
        return found

    async def settled(self, target: str, *sources: str) -> Trace:
        """The trace once every one of `sources` has an `effect.applied` line."""

        def done(found: Trace) -> bool:
            seen = {
                e.source for c in found.checkouts for e in c.entries if e.kind == "effect.applied"
            }
            return set(sources) <= seen

        return await eventually(
            lambda: self.trace(target), until=done, timeout=30, interval=0.2, what="effects"
        )

    async def document(self, target: str) -> dict[str, Any]:
        """What `checkout trace TARGET --json` prints (the command's own JSON is tested in
        test_timeline.py: run here, it would catch the in-process parts' logs on stdout)."""
        document: dict[str, Any] = json.loads(json.dumps(trace_json(await self.trace(target))))
        return document


@pytest.fixture(scope="module")
def system(
    pipeline: Pipeline,
    topology: Topology,
    rabbit: aio_pika.abc.AbstractRobustConnection,
) -> System:
    """The shared in-process pipeline (tests/integration/conftest.py), seen as a timeline."""
    return System(pipeline.api, pipeline.mocks, pipeline.engine, rabbit, topology)


def kinds(checkout: dict[str, Any]) -> list[tuple[str, str]]:
    return [(e["source"], e["kind"]) for e in checkout["entries"]]


def position(checkout: dict[str, Any], source: str, kind: str, what: str = "") -> int:
    for i, e in enumerate(checkout["entries"]):
        if e["source"] == source and e["kind"] == kind and what in e["what"]:
            return i
    raise AssertionError(f"no {source} {kind} {what!r} in {kinds(checkout)}")


def assert_in_time_order(checkout: dict[str, Any]) -> None:
    offsets = [e["offset_ms"] for e in checkout["entries"]]
    assert offsets[0] == 0
    assert offsets == sorted(offsets)
    assert all(e["delta_ms"] >= 0 for e in checkout["entries"][1:])


async def test_a_paid_order_shows_the_request_the_saga_and_every_effect(system: System) -> None:
    order_id, checkout_id = await system.checkout("49.00")
    await system.settled(order_id, "invoice", "email", "production")

    document = await system.document(order_id)

    assert document["order_id"] == order_id
    assert document["order"]["status"] == "PAID"
    [checkout] = document["checkouts"]
    assert checkout["checkout_id"] == checkout_id
    assert checkout["state"] == "PAID"
    assert checkout["idempotency_key"] == f"k-{order_id}"
    assert checkout["payment"]["status"] == "SUCCESSFUL"
    assert_in_time_order(checkout)
    requested = position(checkout, "api", "checkout.requested")
    pending = position(checkout, "saga", "saga.transition", "PAYMENT_PENDING")
    paid = position(checkout, "saga", "saga.transition", "→ PAID")
    effects = [position(checkout, s, "effect.applied") for s in ("invoice", "email", "production")]
    assert requested < pending < paid < min(effects)
    assert document["dead_letters"] == []
    assert document["pending_outbox"] == []
    assert document["dead_letter_queues"]["read"] is True

    # The API's form of one checkout is the same document.
    response = await system.api.get(f"/checkouts/{checkout_id}/timeline")
    assert response.status_code == 200, response.text
    assert response.json()["checkouts"][0]["checkout_id"] == checkout_id


async def test_a_declined_order_ends_failed_with_no_effects(system: System) -> None:
    order_id, _ = await system.checkout("25.01")

    async def failed() -> dict[str, Any]:
        return await system.document(order_id)

    document = await eventually(
        failed,
        until=lambda d: d["checkouts"][0]["state"] == "FAILED",
        timeout=30,
        interval=0.3,
        what="declined checkout",
    )
    [checkout] = document["checkouts"]
    assert checkout["failure_reason"] == "card_declined"
    assert checkout["payment"]["status"] == "FAILED"
    assert_in_time_order(checkout)
    declined = checkout["entries"][position(checkout, "saga", "saga.transition", "→ FAILED")]
    assert declined["what"] == "payment.declined: PAYMENT_PENDING → FAILED"
    assert declined["detail"] == "card_declined"
    assert not [k for k in kinds(checkout) if k[1] == "effect.applied"]


async def test_a_dead_lettered_and_replayed_production_message_tells_the_whole_story(
    system: System, uow: UnitOfWork
) -> None:
    await system.mocks.post("/mock/production/outage", json={"down": True})
    try:
        order_id, checkout_id = await system.checkout("21.00")
        parked = await eventually(
            lambda: system.trace(order_id),
            until=lambda t: bool(t.dead_letters),
            timeout=30,
            interval=0.2,
            what="the production message in its dead-letter queue",
        )
    finally:
        await system.mocks.post("/mock/production/outage", json={"down": False})

    [letter] = parked.dead_letters
    production = system.topology.queues["production"]
    assert letter.dlq == production.dlq
    assert letter.attempts is not None
    assert letter.error
    document = await system.document(order_id)
    [shown] = document["dead_letters"]
    assert shown["message_id"] == letter.message_id
    [checkout] = document["checkouts"]
    parked_at = position(checkout, "production", "message.dead_lettered")
    assert position(checkout, "saga", "saga.transition", "→ PAID") < parked_at
    assert "still in" in str(checkout["entries"][parked_at])

    assert letter.message_id is not None
    await replay_recorded(
        system.rabbit,
        uow,
        production,
        Selection.of([letter.message_id]),
        actor="tester",
        reason="production back up",
    )
    await system.settled(checkout_id, "invoice", "email", "production")

    document = await system.document(checkout_id)
    assert document["target"] == "checkout"
    assert document["dead_letters"] == []
    [checkout] = document["checkouts"]
    assert_in_time_order(checkout)
    replayed = position(checkout, "dlq", "message.replayed")
    applied = position(checkout, "production", "effect.applied")
    assert replayed < applied
    entry = checkout["entries"][replayed]
    assert entry["message_id"] == letter.message_id
    assert entry["what"] == f"OrderPaid replayed to {production.name} by tester"
    assert "reason: production back up" in entry["detail"]
