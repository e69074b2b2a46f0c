"""Every path of CONTRACT.md section 7 through the whole pipeline, in one process.

API (in-process), relay, the saga process's steps and the three consumers run in this
event loop against the real PostgreSQL and RabbitMQ, with the simulated services on a
free port (tests/integration/conftest.py). Each test uses its own orders.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import aio_pika
import pytest
from sqlalchemy import text

from contracts import CancelProductionOrder, RefundPayment
from infra.db.models import ProductionSubmission
from infra.db.session import UnitOfWork
from infra.messaging.outbox import outbox_row
from infra.messaging.publisher import Outgoing
from infra.messaging.topology import Topology
from infra.metrics import registry_for
from operations.dlq.letters import DeadLetter
from operations.dlq.operations import replay_recorded
from operations.dlq.reading import reading
from operations.dlq.selection import Selection
from operations.timeline.query import trace as load_trace
from operations.timeline.render import trace_json
from tests.support.pipeline import Pipeline
from tests.support.polling import eventually
from tests.support.seed import paid_order as seed_paid_order
from tests.support.system import outage

pytestmark = pytest.mark.integration

FINAL = ("CANCELLED", "REJECTED")


async def cancel(p: Pipeline, order_id: str, reason: str = "changed my mind") -> dict[str, Any]:
    response = await p.api.post(f"/orders/{order_id}/cancel", json={"reason": reason})
    assert response.status_code == 202, response.text
    return dict(response.json())


async def settled(p: Pipeline, cancellation_id: str) -> dict[str, Any]:
    async def probe() -> dict[str, Any]:
        return dict((await p.api.get(f"/cancellations/{cancellation_id}")).json())

    return await eventually(
        probe, until=lambda c: c["state"] in FINAL, timeout=30, what="cancellation final"
    )


async def paid(p: Pipeline, amount: str) -> tuple[str, str]:
    """A PAID order (amount as given) whose production order was submitted."""
    order = await p.order(amount)
    checkout = await p.checkout(order["order_id"])
    assert (await p.final(checkout["checkout_id"]))["state"] == "PAID"
    await eventually(
        lambda: p.rows(ProductionSubmission, order["order_id"]),
        until=lambda n: n == 1,
        what="production submission",
    )
    return order["order_id"], checkout["checkout_id"]


async def scalar(p: Pipeline, sql: str, **params: Any) -> Any:
    async with p.engine.connect() as conn:
        return (await conn.execute(text(sql), params)).scalar()


async def test_a_pending_order_is_cancelled_without_refund(pipeline: Pipeline) -> None:
    order = await pipeline.order("12.00")
    cancelled = await cancel(pipeline, order["order_id"])
    assert cancelled["state"] == "CANCELLED"
    assert cancelled["refund"] is None
    view = (await pipeline.api.get(f"/orders/{order['order_id']}")).json()
    assert view["status"] == "CANCELLED"
    assert view["payment"] is None


async def test_a_paid_order_is_cancelled_in_production_then_refunded(pipeline: Pipeline) -> None:
    order_id, _ = await paid(pipeline, "21.00")
    started = await cancel(pipeline, order_id)
    assert started["state"] == "CANCELLING_PRODUCTION"
    final = await settled(pipeline, started["cancellation_id"])
    assert final["state"] == "CANCELLED"
    assert final["refund"]["status"] == "SUCCEEDED"
    assert final["refund"]["amount"] == "21.00"
    assert [s["name"] for s in final["steps"]] == [
        "cancellation.requested",
        "production.cancel.requested",
        "refund.requested",
        "order.cancelled",
    ]
    view = (await pipeline.api.get(f"/orders/{order_id}")).json()
    assert view["status"] == "CANCELLED"
    assert view["payment"]["status"] == "REFUNDED"
    provider = await scalar(
        pipeline, "SELECT provider_payment_id FROM payments WHERE order_id = :o", o=order_id
    )
    refunds = [e for e in (await pipeline.mocks.get("/mock/refunds")).json() if provider in str(e)]
    assert len(refunds) == 1
    assert refunds[0]["idempotency_key"] == started["cancellation_id"]
    cancellations = await pipeline.effects("/mock/production/cancellations", order_id)
    assert len(cancellations) == 1
    published = await scalar(
        pipeline,
        "SELECT count(*) FROM outbox WHERE body LIKE :c",
        c=f"%{started['cancellation_id']}%",
    )
    assert published == 0  # the relay published and removed every row


async def test_an_order_in_production_is_rejected_and_keeps_its_charge(pipeline: Pipeline) -> None:
    order_id, _ = await paid(pipeline, "30.06")
    started = await cancel(pipeline, order_id)
    final = await settled(pipeline, started["cancellation_id"])
    assert final["state"] == "REJECTED"
    assert final["rejection_reason"] == "already_in_production"
    assert final["refund"] is None
    view = (await pipeline.api.get(f"/orders/{order_id}")).json()
    assert view["status"] == "PAID"
    assert view["payment"]["status"] == "SUCCESSFUL"
    assert (
        await scalar(pipeline, "SELECT count(*) FROM refunds WHERE order_id = :o", o=order_id) == 0
    )
    # A rejected cancellation is final: a new one may be asked for (and is rejected again).
    again = await cancel(pipeline, order_id)
    assert again["cancellation_id"] != started["cancellation_id"]
    assert (await settled(pipeline, again["cancellation_id"]))["state"] == "REJECTED"


async def test_a_refund_that_fails_twice_is_retried_to_success(pipeline: Pipeline) -> None:
    order_id, _ = await paid(pipeline, "40.05")
    started = await cancel(pipeline, order_id)
    final = await settled(pipeline, started["cancellation_id"])
    assert final["state"] == "CANCELLED"
    refunds = [
        e
        for e in (await pipeline.mocks.get("/mock/refunds")).json()
        if e["idempotency_key"] == started["cancellation_id"]
    ]
    assert len(refunds) == 1
    assert refunds[0]["attempts"] == 3


async def test_a_cancellation_waits_for_a_charge_in_flight_then_refunds_it(
    pipeline: Pipeline,
) -> None:
    async with outage(pipeline.mocks, "payments"):
        order = await pipeline.order("50.00")
        checkout = await pipeline.checkout(order["order_id"])
        started = await cancel(pipeline, order["order_id"])
        assert started["state"] == "WAITING_FOR_CHECKOUT"
    assert (await pipeline.final(checkout["checkout_id"]))["state"] == "PAID"
    final = await settled(pipeline, started["cancellation_id"])
    assert final["state"] == "CANCELLED"
    assert final["refund"]["status"] == "SUCCEEDED"
    view = (await pipeline.api.get(f"/orders/{order['order_id']}")).json()
    assert (view["status"], view["payment"]["status"]) == ("CANCELLED", "REFUNDED")


async def test_a_cancellation_waiting_for_a_declined_charge_refunds_nothing(
    pipeline: Pipeline,
) -> None:
    async with outage(pipeline.mocks, "payments"):
        order = await pipeline.order("50.01")
        checkout = await pipeline.checkout(order["order_id"])
        started = await cancel(pipeline, order["order_id"])
        assert started["state"] == "WAITING_FOR_CHECKOUT"
    assert (await pipeline.final(checkout["checkout_id"]))["state"] == "FAILED"
    final = await settled(pipeline, started["cancellation_id"])
    assert final["state"] == "CANCELLED"
    assert final["refund"] is None
    assert [s["name"] for s in final["steps"]][-1] == "order.cancelled"
    view = (await pipeline.api.get(f"/orders/{order['order_id']}")).json()
    assert (view["status"], view["payment"]["status"]) == ("CANCELLED", "FAILED")
    assert (
        await scalar(
            pipeline, "SELECT count(*) FROM refunds WHERE order_id = :o", o=order["order_id"]
        )
        == 0
    )


async def test_ten_concurrent_cancels_of_a_paid_order_refund_once(pipeline: Pipeline) -> None:
    order_id, _ = await paid(pipeline, "60.00")
    responses = await asyncio.gather(
        *(
            pipeline.api.post(f"/orders/{order_id}/cancel", json={"reason": "twice"})
            for _ in range(10)
        )
    )
    # While the cancellation is active each call returns it; one that comes after it
    # ended CANCELLED is told so.
    accepted = [r.json() for r in responses if r.status_code == 202]
    refused = [r.json() for r in responses if r.status_code != 202]
    assert accepted
    assert {p["type"] for p in refused} <= {"urn:checkout:problem:order-already-cancelled"}
    ids = {c["cancellation_id"] for c in accepted}
    assert len(ids) == 1
    final = await settled(pipeline, ids.pop())
    assert final["state"] == "CANCELLED"
    count = "SELECT count(*) FROM {} WHERE order_id = :o"
    assert await scalar(pipeline, count.format("refunds"), o=order_id) == 1
    assert await scalar(pipeline, count.format("cancellations"), o=order_id) == 1


async def test_a_refund_of_a_late_charge_leaves_the_order_as_it_is(pipeline: Pipeline) -> None:
    """A refund with no cancellation (issue 13's late charge): the payment is REFUNDED,
    `OrderPaymentRefunded` is published, the order's status is not touched."""
    order_id, checkout_id = await paid(pipeline, "70.00")
    payment_id, provider = await _one(
        pipeline,
        "SELECT payment_id, provider_payment_id FROM payments WHERE order_id = :o",
        o=order_id,
    )
    refund_id = uuid.uuid4()
    command = RefundPayment(
        refund_id=refund_id,
        payment_id=payment_id,
        provider_payment_id=provider,
        order_id=uuid.UUID(order_id),
        checkout_id=uuid.UUID(checkout_id),
        cancellation_id=None,
        amount=Decimal("70.00"),
        currency="EUR",
        reason="charged after its checkout had failed",
        idempotency_key=str(refund_id),
    )
    now = datetime.now(UTC)
    insert, params = outbox_row(command, correlation_id=uuid.UUID(checkout_id))
    async with pipeline.engine.begin() as conn:
        driver = await conn.get_raw_connection()
        cursor = driver.driver_connection.cursor()  # type: ignore[union-attr]
        await cursor.execute(
            "INSERT INTO refunds (refund_id, payment_id, order_id, cancellation_id, amount,"
            " currency, status, reason, idempotency_key, created_at, updated_at)"
            " VALUES (%s, %s, %s, NULL, 70.00, 'EUR', 'PENDING', %s, %s, %s, %s)",
            (refund_id, payment_id, order_id, command.reason, str(refund_id), now, now),
        )
        await cursor.execute(insert, params)
    await eventually(
        lambda: scalar(
            pipeline, "SELECT status FROM refunds WHERE refund_id = :r", r=str(refund_id)
        ),
        until=lambda s: s == "SUCCEEDED",
        what="late refund",
    )
    view = (await pipeline.api.get(f"/orders/{order_id}")).json()
    assert (view["status"], view["payment"]["status"]) == ("PAID", "REFUNDED")


async def _one(p: Pipeline, sql: str, **params: Any) -> tuple[Any, ...]:
    async with p.engine.connect() as conn:
        row = (await conn.execute(text(sql), params)).one()
    return tuple(row)


async def test_the_trace_shows_the_cancellation_beside_the_checkout(pipeline: Pipeline) -> None:
    order_id, checkout_id = await paid(pipeline, "80.00")
    started = await cancel(pipeline, order_id)
    await settled(pipeline, started["cancellation_id"])

    async def traced() -> dict[str, Any]:
        async with pipeline.engine.connect() as conn:
            found = await load_trace(conn, uuid.UUID(started["cancellation_id"]))
        assert found is not None
        return trace_json(found)

    # The relay records each publish after it confirmed it: wait for the last one.
    document = await eventually(
        traced,
        until=lambda d: (
            any(
                e["what"].startswith("OrderCancelled published")
                for c in d["cancellations"]
                for e in c["entries"]
            )
            and any(
                e["message_type"] == "OrderPaymentRefunded"
                for c in d["checkouts"]
                for e in c["entries"]
            )
        ),
        what="the cancellation's publishes in its trace",
    )
    assert [c["checkout_id"] for c in document["checkouts"]] == [checkout_id]
    [one] = document["cancellations"]
    assert one["cancellation_id"] == started["cancellation_id"]
    assert one["state"] == "CANCELLED"
    whats = [e["what"] for e in one["entries"]]
    assert whats[0] == "cancellation requested → REQUESTED"
    for published in ("CancelProductionOrder", "RefundPayment", "OrderCancelled"):
        assert any(w.startswith(f"{published} published") for w in whats), whats
    # OrderPaymentRefunded is correlated with the checkout whose payment it returns.
    [paid_checkout] = document["checkouts"]
    assert any(e["message_type"] == "OrderPaymentRefunded" for e in paid_checkout["entries"])


async def test_a_refund_past_its_retries_waits_in_its_dead_letter_queue_for_a_replay(
    pipeline: Pipeline,
    rabbit: aio_pika.abc.AbstractRobustConnection,
    topology: Topology,
    uow: UnitOfWork,
) -> None:
    """Never dropped: the refund's command is parked, the cancellation stays REFUNDING,
    and a replay (same key) refunds once."""
    order_id, _ = await paid(pipeline, "90.00")
    async with outage(pipeline.mocks, "payments"):
        started = await cancel(pipeline, order_id)

        async def parked() -> Any:
            async with pipeline.engine.connect() as conn:
                return await load_trace(
                    conn, uuid.UUID(started["cancellation_id"]), rabbit=rabbit, topology=topology
                )

        found = await eventually(
            parked,
            until=lambda t: t is not None and bool(t.dead_letters),
            timeout=30,
            interval=0.3,
            what="the refund in its dead-letter queue",
        )
    [letter] = found.dead_letters
    assert letter.dlq == topology.queues["refund"].dlq
    assert letter.message_type == "RefundPayment"
    waiting = (await pipeline.api.get(f"/cancellations/{started['cancellation_id']}")).json()
    assert waiting["state"] == "REFUNDING"
    assert waiting["refund"]["status"] == "PENDING"
    assert letter.message_id is not None

    await replay_recorded(
        rabbit,
        uow,
        topology.queues["refund"],
        Selection.of([letter.message_id]),
        actor="tester",
        reason="payments back up",
    )
    final = await settled(pipeline, started["cancellation_id"])
    assert final["state"] == "CANCELLED"
    assert final["refund"]["status"] == "SUCCEEDED"
    assert len(await refunds_keyed(pipeline, started["cancellation_id"])) == 1


async def test_a_refund_command_nobody_recorded_refunds_nothing(
    pipeline: Pipeline, rabbit: aio_pika.abc.AbstractRobustConnection, topology: Topology
) -> None:
    """A forged or stray RefundPayment is dead-lettered at once, as permanent."""
    order_id, checkout_id = await paid(pipeline, "95.00")
    payment_id, provider = await _one(
        pipeline,
        "SELECT payment_id, provider_payment_id FROM payments WHERE order_id = :o",
        o=order_id,
    )
    forged = RefundPayment(
        refund_id=uuid.uuid4(),
        payment_id=payment_id,
        provider_payment_id=provider,
        order_id=uuid.UUID(order_id),
        checkout_id=uuid.UUID(checkout_id),
        cancellation_id=None,
        amount=Decimal("95.00"),
        currency="EUR",
        reason="forged",
        idempotency_key="forged-key",
    )
    message_id = uuid.uuid4()
    await pipeline.publisher.publish(
        Outgoing.of(
            forged,
            exchange=topology.internal_exchange,
            message_id=message_id,
            correlation_id=uuid.UUID(checkout_id),
        )
    )
    letters = await eventually(
        lambda: peek(rabbit, topology.queues["refund"].dlq, str(message_id)),
        what="the forged refund dead-lettered",
    )
    assert letters
    assert await refunds_keyed(pipeline, "forged-key") == []
    view = (await pipeline.api.get(f"/orders/{order_id}")).json()
    assert view["payment"]["status"] == "SUCCESSFUL"


async def refunds_keyed(p: Pipeline, key: str) -> list[dict[str, Any]]:
    entries = (await p.mocks.get("/mock/refunds")).json()
    return [e for e in entries if e["idempotency_key"] == key]


async def peek(
    rabbit: aio_pika.abc.AbstractRobustConnection, dlq: str, message_id: str
) -> list[DeadLetter]:
    """The dead letters of `dlq` with this id; they stay in their queue."""
    found = []
    async with reading(rabbit, dlq) as reader:
        async for message in reader.messages(1000):
            letter = DeadLetter.of(message)
            if letter.message_id == message_id:
                found.append(letter)
    return found


async def test_cancels_racing_payments_never_keep_or_invent_a_charge(pipeline: Pipeline) -> None:
    """Cancel meets checkout at every timing: a cancel sent 0-60 ms after the checkout,
    for paid and declined charges alike. Whatever each interleaving, a cancelled order
    keeps no charge, a charge is refunded at most once, and nothing is refunded that was
    not charged."""
    amounts = [f"{20 + i}.{'01' if i % 3 == 0 else '00'}" for i in range(12)]
    orders = [await pipeline.order(amount) for amount in amounts]

    async def race(order_id: str, delay_ms: int) -> str:
        await pipeline.checkout(order_id)
        await asyncio.sleep(delay_ms / 1000)  # the race's own timing, not a wait
        return str((await cancel(pipeline, order_id))["cancellation_id"])

    ids = await asyncio.gather(*(race(o["order_id"], (i * 7) % 60) for i, o in enumerate(orders)))
    finals = [await settled(pipeline, c) for c in ids]
    assert {f["state"] for f in finals} == {"CANCELLED"}
    charges = {
        str(e["response"]["payment_id"]): e["request"]["order_id"]
        for e in (await pipeline.mocks.get("/mock/payments")).json()
        if e["response"].get("status") == "SUCCESSFUL"
    }
    # This test's refunds only: they carry its cancellations' ids as keys. (The database
    # is the session's, so a saga a module's pipeline starts also finishes what earlier
    # modules' tests left in the outbox, such as the refund of a charge they simulated.)
    refunded = [
        e["request"]["payment_id"]
        for e in (await pipeline.mocks.get("/mock/refunds")).json()
        if e["idempotency_key"] in ids
    ]
    for order in orders:
        order_id = order["order_id"]
        view = (await pipeline.api.get(f"/orders/{order_id}")).json()
        assert view["status"] == "CANCELLED"
        charged = [p for p, o in charges.items() if o == order_id]
        for payment in charged:
            assert refunded.count(payment) == 1, (order_id, payment)
        if charged:
            assert view["payment"]["status"] == "REFUNDED"
        else:
            assert view["payment"]["status"] == "FAILED"
    payments = (await pipeline.mocks.get("/mock/payments")).json()
    refunds = (await pipeline.mocks.get("/mock/refunds")).json()
    invented = [p for p in refunded if p not in charges]
    assert not invented, {
        "refunded but not charged": invented,
        "payments": payments,
        "refunds": refunds,
    }


async def test_a_production_cancel_nobody_asked_for_cancels_nothing(
    pipeline: Pipeline, rabbit: aio_pika.abc.AbstractRobustConnection, topology: Topology
) -> None:
    """A CancelProductionOrder of no cancellation of this system is dead-lettered at once:
    production is not asked, the paid order stays as it is."""
    order_id, _ = await paid(pipeline, "97.00")
    forged = CancelProductionOrder(cancellation_id=uuid.uuid4(), order_id=uuid.UUID(order_id))
    message_id = uuid.uuid4()
    await pipeline.publisher.publish(
        Outgoing.of(
            forged,
            exchange=topology.internal_exchange,
            message_id=message_id,
            correlation_id=forged.cancellation_id,
        )
    )
    [letter] = await eventually(
        lambda: peek(rabbit, topology.queues["production-cancel"].dlq, str(message_id)),
        what="the forged production cancel dead-lettered",
    )
    assert letter.error
    assert await pipeline.effects("/mock/production/cancellations", order_id) == []
    assert (await pipeline.api.get(f"/orders/{order_id}")).json()["status"] == "PAID"


async def test_a_submission_still_queued_when_the_cancel_came_never_reaches_production(
    pipeline: Pipeline,
    rabbit: aio_pika.abc.AbstractRobustConnection,
    topology: Topology,
    uow: UnitOfWork,
) -> None:
    """The cancellation reaches the Production Service before the order does: production
    remembers it, the refund goes on, and the late submission is refused and recorded as
    "cancelled meanwhile", not dead-lettered."""
    paid_event = await seed_paid_order(uow, amount=Decimal("61.00"))  # OrderPaid not sent yet
    order_id = str(paid_event.order_id)
    started = await cancel(pipeline, order_id)
    final = await settled(pipeline, started["cancellation_id"])
    assert final["state"] == "CANCELLED"
    assert final["refund"]["status"] == "SUCCEEDED"
    [entry] = await pipeline.effects("/mock/production/cancellations", order_id)
    assert entry["response"]["status"] == "CANCELLED"

    message_id = uuid.uuid4()
    await pipeline.publisher.publish(
        Outgoing.of(
            paid_event,
            exchange=topology.orders_exchange,
            message_id=message_id,
            correlation_id=paid_event.checkout_id,
        )
    )
    refused = await eventually(
        lambda: pipeline.effects("/mock/production/orders", order_id),
        until=lambda entries: bool(entries),
        what="the late submission answered",
    )
    assert [e["response"].get("reason") for e in refused] == ["cancelled"]
    recorded = await eventually(
        lambda: scalar(
            pipeline,
            "SELECT count(*) FROM checkout_events WHERE message_id = :m"
            " AND kind = 'effect.cancelled_meanwhile'",
            m=str(message_id),
        ),
        until=lambda n: n == 1,
        what="the production consumer's 'cancelled meanwhile'",
    )
    assert recorded == 1
    assert await pipeline.rows(ProductionSubmission, order_id) == 0
    assert await peek(rabbit, topology.queues["production"].dlq, str(message_id)) == []


async def test_metrics_count_cancellations_by_state_and_refunds_by_outcome(
    pipeline: Pipeline,
) -> None:
    def sample(name: str, **labels: str) -> float:
        return registry_for("saga").get_sample_value(name, labels) or 0.0

    refunds = sample("checkout_refunds_total", outcome="succeeded")
    moved = sample(
        "checkout_cancellation_transitions_total", from_state="REFUNDING", to_state="CANCELLED"
    )
    order_id, _ = await paid(pipeline, "23.00")
    started = await cancel(pipeline, order_id)
    await settled(pipeline, started["cancellation_id"])
    assert sample("checkout_refunds_total", outcome="succeeded") == refunds + 1
    assert (
        sample(
            "checkout_cancellation_transitions_total",
            from_state="REFUNDING",
            to_state="CANCELLED",
        )
        == moved + 1
    )
    exposed = (await pipeline.api.get("/metrics")).text
    assert 'cancellations_requested_total{state="CANCELLING_PRODUCTION"}' in exposed
