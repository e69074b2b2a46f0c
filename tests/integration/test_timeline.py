"""The checkout timeline against the real database (and broker): the recorder writes,
`checkout trace` reads back one story in time order, as JSON and on a terminal.

The rows are inserted by hand (and the events through the recorder), so the timeline
is checked exactly; `test_timeline_pipeline.py` runs real checkouts. The command runs
in a worker thread, since it runs its own event loop (`asyncio.run`) as from a shell.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import aio_pika
import psycopg
import pytest
import typer
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner, Result

from checkout_api.app import create_app
from checkout_api.testing import running
from infra.auth.keys import Role
from infra.db.migrate import libpq_url
from infra.db.models import (
    Checkout,
    CheckoutStep,
    DlqAuditEntry,
    EmailNotification,
    Invoice,
    Order,
    OutboxMessage,
    Payment,
    ProductionSubmission,
)
from infra.db.session import UnitOfWork
from infra.messaging import failures
from infra.messaging.publisher import Outgoing, Publisher
from infra.messaging.topology import Topology
from infra.settings import Settings, redact_url
from infra.timeline.record import (
    Event,
    add_event,
    event,
    insert_events,
    record_published,
    write_events,
)
from operations.cli import trace as trace_cli
from operations.cli.trace import trace
from operations.dlq.operations import replay_recorded
from operations.dlq.selection import Selection
from operations.timeline.query import trace as load_trace
from operations.timeline.render import trace_json
from tests.support.amqp import depth

pytestmark = pytest.mark.integration

runner = CliRunner()
cli_app = typer.Typer()
cli_app.command()(trace)


async def cli(*args: str, **env: str) -> Result:
    """`checkout trace ARGS` as from a shell: stdout is a pipe, so the output is JSON."""
    return await asyncio.to_thread(lambda: runner.invoke(cli_app, list(args), env=env or None))


def output(result: Result) -> Any:
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


@dataclass(frozen=True)
class Seeded:
    order_id: uuid.UUID
    checkout_id: uuid.UUID
    paid_id: uuid.UUID  # the OrderPaid message
    charge_id: uuid.UUID  # the ChargePayment message
    key: str
    t0: datetime

    def at(self, ms: float) -> datetime:
        return self.t0 + timedelta(milliseconds=ms)


async def seed(uow: UnitOfWork, settings: Settings, *, production: bool = True) -> Seeded:
    """A paid checkout as every part would leave it, its events written by the recorder."""
    s = Seeded(
        order_id=uuid.uuid4(),
        checkout_id=uuid.uuid4(),
        paid_id=uuid.uuid4(),
        charge_id=uuid.uuid4(),
        key=f"key-{uuid.uuid4().hex[:8]}",
        t0=datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5),
    )
    cid, oid = s.checkout_id, s.order_id
    async with uow() as session:
        session.add(
            Order(
                order_id=oid,
                order_name="Timeline poster",
                amount=Decimal("19.99"),
                currency="EUR",
                customer_email="jane@example.com",
                customer_name="Jane",
                status="PAID",
                created_at=s.at(-1000),
                updated_at=s.at(300),
            )
        )
        await session.flush()
        session.add(
            Checkout(
                checkout_id=cid,
                order_id=oid,
                state="PAID",
                trace_id="4bf92f3577b34da6a3ce929d0e0e4736"[:32],
                created_at=s.at(0),
                updated_at=s.at(300),
            )
        )
        await session.flush()
        session.add_all(
            [
                CheckoutStep(
                    checkout_id=cid,
                    name="checkout.requested",
                    status="STARTED",
                    at=s.at(0),
                    detail=f"Idempotency-Key: {s.key}",
                ),
                CheckoutStep(
                    checkout_id=cid,
                    name="payment.requested",
                    status="PAYMENT_PENDING",
                    at=s.at(100),
                    detail="charge sent",
                ),
                CheckoutStep(
                    checkout_id=cid,
                    name="payment.succeeded",
                    status="PAID",
                    at=s.at(300),
                    detail="provider payment p-1",
                ),
                Payment(
                    payment_id=uuid.uuid4(),
                    checkout_id=cid,
                    order_id=oid,
                    amount=Decimal("19.99"),
                    currency="EUR",
                    status="SUCCESSFUL",
                    provider_payment_id="p-1",
                    created_at=s.at(100),
                    updated_at=s.at(300),
                ),
                Invoice(
                    invoice_id=uuid.uuid4(),
                    order_id=oid,
                    checkout_id=cid,
                    amount=Decimal("19.99"),
                    currency="EUR",
                    status="CREATED",
                    source_message_id=s.paid_id,
                    created_at=s.at(400),
                    updated_at=s.at(400),
                ),
                EmailNotification(
                    order_id=oid,
                    checkout_id=cid,
                    source_message_id=s.paid_id,
                    recipient="jane@example.com",
                    sent_at=s.at(450),
                ),
            ]
        )
        if production:
            session.add(
                ProductionSubmission(
                    order_id=oid,
                    checkout_id=cid,
                    source_message_id=s.paid_id,
                    production_reference="PR-1",
                    submitted_at=s.at(9000),
                )
            )
        # In the caller's transaction: staged, and a batch written at once.
        add_event(
            session,
            checkout_id=cid,
            order_id=oid,
            source="api",
            kind="http.request",
            at=s.at(-3),
            duration_ms=4.5,
            detail=f"POST /orders/{oid}/checkout 202",
        )
        await insert_events(
            session,
            [Event(cid, "saga", "duplicate.skipped", s.at(310), oid, s.charge_id, "X", None)],
        )
        await session.commit()

    # The relay: raw psycopg, in the transaction that deletes the rows.
    url = libpq_url(settings.database_url.get_secret_value())
    async with await psycopg.AsyncConnection.connect(url) as conn, conn.transaction():
        rows = [
            {
                "message_id": uuid.uuid4(),
                "message_type": "CheckoutRequested",
                "correlation_id": cid,
                "exchange": "internal",
                "routing_key": "checkout.requested",
                "created_at": s.at(0),
            },
            {
                "message_id": s.charge_id,
                "message_type": "ChargePayment",
                "correlation_id": cid,
                "exchange": "internal",
                "routing_key": "payment.charge",
                "created_at": s.at(100),
            },
        ]
        await record_published(conn, rows[:1], at=s.at(40))
        await record_published(conn, rows[1:], at=s.at(125))
        await record_published(
            conn,
            [
                {
                    "message_id": s.paid_id,
                    "message_type": "OrderPaid",
                    "correlation_id": cid,
                    "exchange": "orders",
                    "routing_key": "order.paid",
                    "created_at": s.at(300),
                }
            ],
            at=s.at(330),
        )

    # Outside any transaction (the consumer shell, the payment step).
    assert await write_events(
        uow,
        [
            event(
                checkout_id=cid,
                source="payment",
                kind="payment.attempt",
                at=s.at(250),
                message_id=s.charge_id,
                message_type="ChargePayment",
                duration_ms=120,
                detail="201 SUCCESSFUL",
            ),
            event(
                checkout_id=cid,
                source="invoice",
                kind="effect.applied",
                at=s.at(401),
                message_id=s.paid_id,
                message_type="OrderPaid",
                duration_ms=6,
            ),
            event(
                checkout_id=cid,
                source="production",
                kind="message.retried",
                at=s.at(500),
                message_id=s.paid_id,
                message_type="OrderPaid",
                detail="attempt 1: TransientFailure: production service answered 503",
            ),
        ],
    )
    return s


@pytest.fixture
async def seeded(uow: UnitOfWork, settings: Settings) -> Seeded:
    return await seed(uow, settings)


async def test_the_timeline_merges_every_source_in_time_order(
    engine: AsyncEngine, seeded: Seeded
) -> None:
    async with engine.connect() as conn:
        found = await load_trace(conn, seeded.order_id)
    assert found is not None
    assert found.target == "order"
    [one] = found.checkouts
    assert [(e.source, e.kind, e.offset_ms) for e in one.entries] == [
        ("api", "http.request", 0),
        ("api", "checkout.requested", 3),
        ("relay", "outbox.published", 43),
        ("saga", "saga.transition", 103),
        ("relay", "outbox.published", 128),
        ("payment", "payment.attempt", 253),
        ("saga", "saga.transition", 303),
        ("saga", "duplicate.skipped", 313),
        ("relay", "outbox.published", 333),
        ("invoice", "effect.applied", 404),  # the invoice row folded into the event
        ("email", "effect.applied", 453),
        ("production", "message.retried", 503),
        ("production", "effect.applied", 9003),
    ]
    lags = [e.duration_ms for e in one.entries if e.kind == "outbox.published"]
    assert lags == [40, 25, 30]
    by_kind = {(e.source, e.kind): e for e in one.entries}
    assert by_kind[("invoice", "effect.applied")].detail is not None
    assert by_kind[("invoice", "effect.applied")].detail.startswith("invoice ")
    assert by_kind[("email", "effect.applied")].what == (
        "confirmation e-mail sent to j***@example.com"
    )
    request = by_kind[("api", "checkout.requested")]
    assert request.detail == (
        f"Idempotency-Key: {seeded.key} · trace 4bf92f3577b34da6a3ce929d0e0e4736"
    )
    assert one.payment is not None
    assert one.payment.status == "SUCCESSFUL"


async def test_a_checkout_id_shows_that_checkout_and_an_unknown_id_nothing(
    engine: AsyncEngine, seeded: Seeded
) -> None:
    async with engine.connect() as conn:
        found = await load_trace(conn, seeded.checkout_id)
        unknown = await load_trace(conn, uuid.uuid4())
    assert found is not None
    assert found.target == "checkout"
    assert found.order.order_id == seeded.order_id
    assert [c.checkout.checkout_id for c in found.checkouts] == [seeded.checkout_id]
    assert unknown is None


async def test_replays_and_pending_outbox_rows_are_in_the_story(
    engine: AsyncEngine, uow: UnitOfWork, seeded: Seeded
) -> None:
    async with uow() as session:
        session.add_all(
            [
                DlqAuditEntry(
                    at=seeded.at(8000),
                    actor="ada",
                    action="replay",
                    queue="checkout.production",
                    dlq="checkout.production.dlq",
                    message_count=2,
                    message_ids=[str(uuid.uuid4()), str(seeded.paid_id)],
                    missing=[],
                    reason="production back up",
                    outcome="completed",
                ),
                OutboxMessage(
                    message_id=uuid.uuid4(),
                    exchange="orders",
                    routing_key="order.paid",
                    message_type="OrderPaid",
                    correlation_id=seeded.checkout_id,
                    headers={},
                    body="{}",
                    created_at=seeded.at(9500),
                ),
            ]
        )
        await session.commit()
    try:
        async with engine.connect() as conn:
            found = await load_trace(conn, seeded.order_id)
        assert found is not None
        tail = [(e.source, e.kind) for e in found.checkouts[0].entries[-3:]]
        assert tail == [
            ("dlq", "message.replayed"),
            ("production", "effect.applied"),
            ("outbox", "outbox.pending"),
        ]
        replay = found.checkouts[0].entries[-3]
        assert replay.what == "OrderPaid replayed to checkout.production by ada"
        assert replay.message_id == str(seeded.paid_id)
        [pending] = trace_json(found)["pending_outbox"]
        assert pending["message_type"] == "OrderPaid"
        assert pending["age_ms"] > 60_000
    finally:
        async with engine.begin() as conn:  # an unpublished row would reach the relay tests
            await conn.execute(
                text("DELETE FROM outbox WHERE correlation_id = :c"), {"c": seeded.checkout_id}
            )


async def test_the_command_prints_the_timeline_as_json(seeded: Seeded) -> None:
    document = output(await cli(str(seeded.order_id), "--json", "--no-broker"))

    assert document["order_id"] == str(seeded.order_id)
    assert document["target"] == "order"
    assert document["order"]["status"] == "PAID"
    assert document["dead_letters"] == []
    assert document["pending_outbox"] == []
    assert document["dead_letter_queues"]["read"] is False
    [one] = document["checkouts"]
    assert one["checkout_id"] == str(seeded.checkout_id)
    assert one["state"] == "PAID"
    assert one["idempotency_key"] == seeded.key
    assert one["payment"]["status"] == "SUCCESSFUL"
    entries = one["entries"]
    assert [e["kind"] for e in entries][:4] == [
        "http.request",
        "checkout.requested",
        "outbox.published",
        "saga.transition",
    ]
    offsets = [e["offset_ms"] for e in entries]
    assert offsets == sorted(offsets)
    assert offsets[-1] == one["span_ms"] == 9003
    assert entries[2] == {
        "at": seeded.at(40).isoformat(),
        "offset_ms": 43.0,
        "delta_ms": 40.0,
        "source": "relay",
        "kind": "outbox.published",
        "what": "CheckoutRequested published (lag 40 ms)",
        "detail": "internal checkout.requested",
        "message_id": entries[2]["message_id"],
        "message_type": "CheckoutRequested",
        "duration_ms": 40.0,
        "state": None,
    }


async def test_a_checkout_id_on_the_command_shows_that_checkout(seeded: Seeded) -> None:
    document = output(await cli(str(seeded.checkout_id), "--no-broker"))  # JSON: a pipe
    assert document["target"] == "checkout"
    assert [c["checkout_id"] for c in document["checkouts"]] == [str(seeded.checkout_id)]


async def test_on_a_terminal_the_command_draws_the_timeline(
    seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(trace_cli, "is_terminal", lambda: True)
    monkeypatch.setenv("COLUMNS", "220")
    result = await cli(str(seeded.order_id), "--no-broker")
    assert result.exit_code == 0, result.stderr
    assert f"Checkout {seeded.checkout_id}  PAID" in result.stdout
    assert "payment.succeeded: PAYMENT_PENDING → PAID" in result.stdout
    assert "+9.00 s" in result.stdout
    assert "dead-letter queues not read (--no-broker)" in result.stdout


async def test_a_broker_that_does_not_answer_leaves_the_queues_unread(seeded: Seeded) -> None:
    document = output(
        await cli(str(seeded.order_id), CHECKOUT_RABBIT_URL="amqp://guest:guest@127.0.0.1:1/")
    )
    assert document["dead_letter_queues"]["read"] is False
    assert document["dead_letter_queues"]["error"] == (
        "RabbitMQ at 127.0.0.1:1 is not answering (AMQPConnectionError)"
    )
    assert len(document["checkouts"][0]["entries"]) == 13


async def test_an_unknown_id_fails_with_one_line(settings: Settings) -> None:
    missing = uuid.uuid4()
    result = await cli(str(missing), "--no-broker")
    assert result.exit_code == 1
    database = redact_url(settings.database_url.get_secret_value())
    assert result.stderr == (
        f"error: no order, checkout or cancellation has the id {missing} in {database}: "
        "check the id, and that CHECKOUT_DATABASE_URL is the system's database\n"
    )
    assert result.stdout == ""


async def test_an_id_that_is_no_uuid_is_bad_usage() -> None:
    result = await cli("order-42")
    assert result.exit_code == 2
    assert "'order-42' is not a UUID" in result.stderr


# --------------------------------------------------------------------------- broker


@pytest.fixture
async def publisher(settings: Settings, purge_queues: Topology) -> AsyncIterator[Publisher]:
    publisher = await Publisher.connect(settings.rabbit_url.get_secret_value())
    yield publisher
    await publisher.close()


async def park(publisher: Publisher, topology: Topology, s: Seeded) -> Outgoing:
    """The OrderPaid of `s`, as the production consumer dead-letters it after 4 attempts."""
    queue = topology.queues["production"]
    outgoing = Outgoing(
        exchange="",
        routing_key=queue.dlq,
        body=b"{}",
        message_id=s.paid_id,
        correlation_id=s.checkout_id,
        message_type="OrderPaid",
        headers={
            "x-schema-version": 1,
            failures.ORIGINAL_QUEUE: queue.name,
            failures.ATTEMPTS: 4,
            failures.FIRST_FAILURE_AT: s.at(500).isoformat(),
            failures.LAST_FAILURE_AT: s.at(2500).isoformat(),
            failures.ERROR_TYPE: "TransientFailure",
            failures.ERROR_MESSAGE: "production service answered 503",
            failures.FAILURE_KIND: "transient",
        },
    )
    await publisher.publish(outgoing)
    return outgoing


async def test_a_parked_message_is_shown_with_its_reason_and_stays_in_its_queue(
    uow: UnitOfWork,
    settings: Settings,
    publisher: Publisher,
    purge_queues: Topology,
    rabbit: aio_pika.abc.AbstractRobustConnection,
) -> None:
    s = await seed(uow, settings, production=False)
    await park(publisher, purge_queues, s)
    someone_else = await seed(uow, settings, production=False)
    await park(publisher, purge_queues, someone_else)

    document = output(await cli(str(s.order_id)))

    [letter] = document["dead_letters"]
    assert letter["message_id"] == str(s.paid_id)
    assert letter["dlq"] == purge_queues.queues["production"].dlq
    assert letter["attempts"] == 4
    assert letter["error"] == "TransientFailure: production service answered 503"
    assert letter["last_failure_at"] == s.at(2500).isoformat()
    assert document["dead_letter_queues"]["read"] is True
    last = document["checkouts"][0]["entries"][-1]
    assert (last["source"], last["kind"]) == ("production", "message.dead_lettered")
    assert last["offset_ms"] == 2503
    assert "still in" in last["what"]
    channel = await rabbit.channel()
    try:
        assert await depth(channel, purge_queues.queues["production"].dlq) == 2
    finally:
        await channel.close()


async def test_a_replay_is_recorded_at_its_start_and_shown_after_the_dead_letter(
    uow: UnitOfWork,
    settings: Settings,
    publisher: Publisher,
    purge_queues: Topology,
    rabbit: aio_pika.abc.AbstractRobustConnection,
) -> None:
    s = await seed(uow, settings, production=False)
    await park(publisher, purge_queues, s)
    queue = purge_queues.queues["production"]
    before = datetime.now(UTC)
    await replay_recorded(
        rabbit, uow, queue, Selection.of([str(s.paid_id)]), actor="ada", reason="back up"
    )

    document = output(await cli(str(s.checkout_id)))

    assert document["dead_letters"] == []
    replay = document["checkouts"][0]["entries"][-1]
    assert (replay["source"], replay["kind"]) == ("dlq", "message.replayed")
    assert replay["message_id"] == str(s.paid_id)
    assert replay["what"] == f"OrderPaid replayed to {queue.name} by ada"
    assert datetime.fromisoformat(replay["at"]) >= before


# --------------------------------------------------------------------------- API


async def test_the_api_serves_one_checkouts_timeline(settings: Settings, seeded: Seeded) -> None:
    app = create_app(settings)
    async with running(app, Role.operator) as client:
        response = await client.get(f"/checkouts/{seeded.checkout_id}/timeline")
        by_order = await client.get(f"/checkouts/{seeded.order_id}/timeline")
        unknown = await client.get(f"/checkouts/{uuid.uuid4()}/timeline")
        malformed = await client.get("/checkouts/nope/timeline")
    assert response.status_code == 200, response.text
    document = response.json()
    assert document == json.loads(json.dumps(document))
    assert document["target"] == "checkout"
    assert [e["kind"] for e in document["checkouts"][0]["entries"]][-1] == "effect.applied"
    assert by_order.status_code == 404
    assert unknown.status_code == 404
    assert unknown.headers["content-type"] == "application/problem+json"
    assert malformed.status_code == 422


async def test_recording_outside_a_transaction_never_raises(uow: UnitOfWork) -> None:
    bad = Event(uuid.uuid4(), "x" * 100, "too.long.a.source")  # varchar(32)
    assert await write_events(uow, [bad]) is False
    assert await write_events(uow, []) is True


async def test_a_batch_is_one_insert_in_the_callers_transaction(
    uow: UnitOfWork, engine: AsyncEngine
) -> None:
    cid = uuid.uuid4()
    async with uow() as session:
        await insert_events(session, [Event(cid, "saga", f"k{n}") for n in range(3)])
        # not committed: rolled back with the caller's work
    async with engine.connect() as conn:
        count = (
            await conn.execute(
                text("SELECT count(*) FROM checkout_events WHERE checkout_id = :c"), {"c": cid}
            )
        ).scalar_one()
    assert count == 0
