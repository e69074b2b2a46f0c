"""The whole checkout in one process against the real PostgreSQL and RabbitMQ.

API (in-process), relay, saga with the payment step, and the three consumers run in
this event loop; the simulated services are served by uvicorn on a free port. Each
test uses its own orders, so the pipeline is shared by the module.
"""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from decimal import Decimal

import pytest

from infra.db.models import EmailNotification, Invoice, Payment, ProductionSubmission
from infra.db.session import UnitOfWork
from infra.messaging.publisher import Outgoing
from infra.messaging.topology import Topology
from tests.support.pipeline import Pipeline
from tests.support.polling import eventually
from tests.support.seed import paid_order

pytestmark = pytest.mark.integration


async def _all_effects_of(p: Pipeline, order_id: str) -> tuple[int, int, int]:
    return (
        await p.rows(Invoice, order_id),
        await p.rows(EmailNotification, order_id),
        await p.rows(ProductionSubmission, order_id),
    )


async def test_a_normal_order_is_paid_with_one_of_every_effect(pipeline: Pipeline) -> None:
    order = await pipeline.order("49.00")
    checkout = await pipeline.checkout(order["order_id"])
    assert checkout["state"] == "PAYMENT_PENDING"  # the first transition is the API's own

    final = await pipeline.final(checkout["checkout_id"])
    assert final["state"] == "PAID"
    assert [s["name"] for s in final["steps"]] == [
        "checkout.requested",
        "payment.requested",
        "payment.succeeded",
    ]

    oid = order["order_id"]
    await eventually(
        lambda: _all_effects_of(pipeline, oid),
        until=lambda e: e == (1, 1, 1),
        timeout=15,
        what="invoice, email and production",
    )
    assert len(await pipeline.effects("/mock/payments", oid)) == 1
    assert len(await pipeline.effects("/mock/emails", oid)) == 1
    assert len(await pipeline.effects("/mock/production/orders", oid)) == 1

    view = (await pipeline.api.get(f"/orders/{oid}")).json()
    assert view["status"] == "PAID"
    assert view["payment"]["status"] == "SUCCESSFUL"
    assert view["payment"]["amount"] == "49.00"
    assert view["invoice"]["status"] == "CREATED"
    assert view["invoice"]["amount"] == "49.00"


async def test_a_declined_payment_fails_the_order_with_no_effects(pipeline: Pipeline) -> None:
    declined = await pipeline.order("25.01")
    checkout = await pipeline.checkout(declined["order_id"])
    final = await pipeline.final(checkout["checkout_id"])
    assert final["state"] == "FAILED"
    assert final["failure_reason"] == "card_declined"

    # A paid order checked out after it has all its effects; by then any effect of
    # the declined one would have happened too.
    barrier = await pipeline.order("10.00")
    await pipeline.final((await pipeline.checkout(barrier["order_id"]))["checkout_id"])
    await eventually(
        lambda: _all_effects_of(pipeline, barrier["order_id"]),
        until=lambda e: e == (1, 1, 1),
        timeout=15,
        what="barrier effects",
    )

    oid = declined["order_id"]
    assert await _all_effects_of(pipeline, oid) == (0, 0, 0)
    assert await pipeline.effects("/mock/emails", oid) == []
    assert await pipeline.effects("/mock/production/orders", oid) == []
    view = (await pipeline.api.get(f"/orders/{oid}")).json()
    assert view["status"] == "FAILED"
    assert view["payment"]["status"] == "FAILED"
    assert view["invoice"] is None


@pytest.mark.parametrize(
    ("amount", "attempts"), [("30.02", 3), ("30.03", 2)], ids=["503-twice", "slow-first-answer"]
)
async def test_a_flaky_payment_is_retried_and_charged_once(
    pipeline: Pipeline, amount: str, attempts: int
) -> None:
    order = await pipeline.order(amount)
    final = await pipeline.final((await pipeline.checkout(order["order_id"]))["checkout_id"])
    assert final["state"] == "PAID"
    assert final["steps"][-1]["detail"].endswith(f"after {attempts} attempts")
    [charge] = await pipeline.effects("/mock/payments", order["order_id"])
    assert charge["attempts"] == attempts
    assert charge["response"]["status"] == "SUCCESSFUL"
    assert await pipeline.rows(Payment, order["order_id"]) == 1


async def test_ten_concurrent_checkouts_give_one_checkout_and_one_charge(
    pipeline: Pipeline,
) -> None:
    order = await pipeline.order("77.00")
    responses = await asyncio.gather(
        *(pipeline.api.post(f"/orders/{order['order_id']}/checkout") for _ in range(10))
    )
    # The charge is commanded by the checkout's own commit, so the checkout may be PAID
    # before the last of the ten is answered: that one is 409, as for any paid order.
    accepted = [r for r in responses if r.status_code == 202]
    assert accepted, [r.status_code for r in responses]
    assert {r.status_code for r in responses} <= {202, 409}
    assert len({r.json()["checkout_id"] for r in accepted}) == 1
    final = await pipeline.final(accepted[0].json()["checkout_id"])
    assert final["state"] == "PAID"
    assert len(await pipeline.effects("/mock/payments", order["order_id"])) == 1


def _unsettled(queues: list[str]) -> int:
    """Messages ready or unacknowledged in `queues` (rabbitmqctl sees both)."""
    out = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "name", "messages"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    counts = dict(line.split("\t") for line in out.splitlines() if "\t" in line)
    return sum(int(counts.get(q, "0")) for q in queues)


async def test_the_same_order_paid_twice_has_one_effect_per_consumer(
    pipeline: Pipeline,
    topology: Topology,
) -> None:
    # An OrderPaid for a paid order, published twice with one message_id: what a relay
    # crash between publish and delete produces.
    event = await paid_order(UnitOfWork(pipeline.engine), amount=Decimal("12.00"))
    order = {"order_id": str(event.order_id)}
    outgoing = Outgoing.of(
        event,
        exchange=topology.orders_exchange,
        message_id=uuid.uuid4(),
        correlation_id=event.checkout_id,
    )
    await pipeline.publisher.publish(outgoing)
    await pipeline.publisher.publish(outgoing)

    queues = [topology.queues[k].name for k in ("invoice", "email", "production")]

    async def settled() -> int:
        return await asyncio.to_thread(_unsettled, queues)

    await eventually(settled, until=lambda n: n == 0, timeout=20, what="both copies consumed")
    assert await _all_effects_of(pipeline, order["order_id"]) == (1, 1, 1)
    [email] = await pipeline.effects("/mock/emails", order["order_id"])
    [production] = await pipeline.effects("/mock/production/orders", order["order_id"])
    # One effect each. Two copies in flight at once may both reach the service (each
    # checks the inbox before the other commits), but they carry one idempotency key,
    # so the service applies it once; a later copy is dropped by the inbox unseen.
    assert email["attempts"] <= 2
    assert production["attempts"] <= 2


async def test_a_bouncing_address_is_dead_lettered_after_one_attempt(
    pipeline: Pipeline,
    topology: Topology,
) -> None:
    order = await pipeline.order("15.00", email="bounce.me@example.com")
    final = await pipeline.final((await pipeline.checkout(order["order_id"]))["checkout_id"])
    assert final["state"] == "PAID"
    oid = order["order_id"]
    await eventually(
        lambda: _all_effects_of(pipeline, oid),
        until=lambda e: e == (1, 0, 1),
        timeout=15,
        what="invoice and production",
    )
    [email] = await eventually(lambda: pipeline.effects("/mock/emails", oid), what="email try")
    assert email["attempts"] == 1
    assert email["status_code"] == 422
