"""Hostile messages to every consumed queue: each is dead-lettered at once, with its
reason, and nothing else happens.

The whole system runs in process (`pipeline`). One real checkout is paid first, so
the tables are not empty and the hostile messages can name real ids. Then, for each
queue the system consumes (payment, invoice, email, production) and each kind
of malformed message, one message is published straight to the queue and must:

- end in `<queue>.dlq` after one attempt, with x-failure-kind "permanent",
  x-error-type, an x-error-message naming the reason, x-original-queue, x-attempts;
- leave every table as it was, except the one timeline line the shell writes for a
  dead-lettered message (`checkout_events`, kind `message.dead_lettered`);
- make no call to the Payment, Email or Production Service.

The size limit of the consumer shell (`MAX_BODY_BYTES`) is tested here as well, at the
shell and through the pipeline.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aio_pika
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts import SCHEMA_VERSION_HEADER, OrderPaid
from infra.db.models import EmailNotification, Invoice, ProductionSubmission
from infra.messaging import failures
from infra.messaging.consumer import MAX_BODY_BYTES, Delivery, QueueConsumer
from infra.messaging.publisher import Outgoing
from infra.messaging.topology import Topology
from infra.settings import Settings
from tests.support.amqp import depth, take
from tests.support.pipeline import Pipeline
from tests.support.polling import eventually

pytestmark = pytest.mark.integration

MOCK_LOGS = ("/mock/payments", "/mock/emails", "/mock/production/orders")
TEST_ID = "x-hostile-test-id"  # carried into the dead-letter copy (headers are kept)


# ---- the paid checkout the hostile messages point at ------------------------------


@dataclass(frozen=True)
class Paid:
    order_id: str
    checkout_id: str
    payment_id: str
    amount: str


@pytest.fixture(scope="module")
async def paid(pipeline: Pipeline) -> Paid:
    """One order paid with every effect applied, and nothing left in flight."""
    order = await pipeline.order("42.00")
    checkout = await pipeline.checkout(order["order_id"])
    final = await pipeline.final(checkout["checkout_id"])
    assert final["state"] == "PAID"
    oid = order["order_id"]

    async def settled() -> tuple[int, ...]:
        effects = [
            await pipeline.rows(model, oid)
            for model in (Invoice, EmailNotification, ProductionSubmission)
        ]
        async with pipeline.engine.connect() as conn:
            outbox = (await conn.execute(text("SELECT count(*) FROM outbox"))).scalar_one()
        return (*effects, outbox)

    await eventually(settled, until=lambda s: s == (1, 1, 1, 0), what="every effect applied")
    view = (await pipeline.api.get(f"/orders/{oid}")).json()
    return Paid(oid, checkout["checkout_id"], view["payment"]["payment_id"], view["amount"])


# Ids of nothing: for the tests of the shell alone, which touch no database.
NOWHERE = Paid(str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4()), "5.00")


# ---- what "nothing happened" means --------------------------------------------------


@dataclass
class Snapshot:
    tables: dict[str, list[str]]
    dead_letter_lines: int
    service_calls: dict[str, int]


async def snapshot(engine: AsyncEngine, pipeline: Pipeline, checkout_id: str) -> Snapshot:
    """Every row of every table (as text), and every call the simulated services took."""
    tables: dict[str, list[str]] = {}
    async with engine.connect() as conn:
        names = (
            await conn.execute(
                text(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                    "AND tablename <> 'alembic_version' ORDER BY tablename"
                )
            )
        ).scalars()
        for name in list(names):
            where = " WHERE t.kind <> 'message.dead_lettered'" if name == "checkout_events" else ""
            rows = await conn.execute(text(f'SELECT t::text FROM "{name}" t{where}'))
            tables[name] = sorted(rows.scalars())
        dead = await conn.execute(
            text(
                "SELECT count(*) FROM checkout_events "
                "WHERE kind = 'message.dead_lettered' AND checkout_id = :c"
            ),
            {"c": checkout_id},
        )
        dead_letter_lines = int(dead.scalar_one())
    calls = {}
    for path in MOCK_LOGS:
        entries = (await pipeline.mocks.get(path)).json()
        calls[path] = sum(int(e["attempts"]) for e in entries)
    return Snapshot(tables, dead_letter_lines, calls)


# ---- the hostile messages ---------------------------------------------------------


@dataclass
class Hostile:
    """One malformed message: body, AMQP properties, and what the error must say."""

    body: bytes
    message_type: str | None
    reason: str  # a substring of x-error-message
    message_id: str | None = field(default_factory=lambda: str(uuid.uuid4()))
    headers: dict[str, Any] = field(default_factory=lambda: {SCHEMA_VERSION_HEADER: 1})


def valid_body(queue: str, p: Paid) -> tuple[str, dict[str, Any]]:
    """(type, body) of a message the queue would accept, about the paid checkout."""
    now = datetime.now(UTC).isoformat()
    if queue == "payment":
        return "ChargePayment", {
            "checkout_id": p.checkout_id,
            "order_id": p.order_id,
            "payment_id": p.payment_id,
            "amount": p.amount,
            "currency": "EUR",
        }
    return "OrderPaid", {
        "order_id": p.order_id,
        "checkout_id": p.checkout_id,
        "payment_id": p.payment_id,
        "order_name": "Hostile poster",
        "amount": p.amount,
        "currency": "EUR",
        "customer": {"email": "jane@example.com", "name": "Jane"},
        "paid_at": now,
    }


def _dumps(body: object) -> bytes:
    return json.dumps(body).encode()


def _ids_as_ints(body: dict[str, Any]) -> dict[str, Any]:
    return {k: (12345 if k.endswith("_id") else v) for k, v in body.items()}


def _field_as_list(body: dict[str, Any]) -> dict[str, Any]:
    return {**body, "amount": [19, 99]}


def _padded_to(body: dict[str, Any], size: int) -> bytes:
    """`body` with an extra (ignored) field that makes it exactly `size` bytes."""
    empty = _dumps({**body, "padding": ""})
    padded = _dumps({**body, "padding": "x" * (size - len(empty))})
    assert len(padded) == size
    return padded


OTHER_TYPE = {"payment": "OrderPaid"}


def _hostile_cases() -> dict[str, Callable[[str, str, dict[str, Any]], Hostile]]:
    """case name -> build(queue, valid type, valid body)."""
    too_big = MAX_BODY_BYTES + 1
    return {
        "not-utf8": lambda q, t, b: Hostile(b"\xff\xfe\x00\x80{\xc3(", t, "Invalid JSON"),
        "not-json": lambda q, t, b: Hostile(b"<order>hello</order>", t, "Invalid JSON"),
        "empty-body": lambda q, t, b: Hostile(b"", t, "Invalid JSON"),
        "json-array": lambda q, t, b: Hostile(b"[1, 2, 3]", t, "Input should be an object"),
        "json-null": lambda q, t, b: Hostile(b"null", t, "Input should be an object"),
        "empty-object": lambda q, t, b: Hostile(b"{}", t, "Field required"),
        "ids-as-ints": lambda q, t, b: Hostile(_dumps(_ids_as_ints(b)), t, "UUID input"),
        "field-as-list": lambda q, t, b: Hostile(_dumps(_field_as_list(b)), t, "[19, 99]"),
        "missing-type": lambda q, t, b: Hostile(_dumps(b), None, "unknown message type None"),
        "unknown-type": lambda q, t, b: Hostile(
            _dumps(b), "OrderShipped", "unknown message type 'OrderShipped'"
        ),
        "type-of-another-queue": lambda q, t, b: Hostile(
            _dumps(b), OTHER_TYPE.get(q, "ChargePayment"), "unknown message type"
        ),
        "message-id-not-uuid": lambda q, t, b: Hostile(
            _dumps(b),
            t,
            'message_id "1\'; DROP TABLE inbox; --" is not a UUID',
            message_id="1'; DROP TABLE inbox; --",
        ),
        "schema-version-99": lambda q, t, b: Hostile(
            _dumps(b),
            t,
            "x-schema-version 99 is not supported",
            headers={SCHEMA_VERSION_HEADER: 99},
        ),
        "schema-version-text": lambda q, t, b: Hostile(
            _dumps(b),
            t,
            "x-schema-version '1' is not supported",
            headers={SCHEMA_VERSION_HEADER: "1"},
        ),
        "negative-attempts": lambda q, t, b: Hostile(
            b"{not json",
            t,
            "Invalid JSON",
            headers={SCHEMA_VERSION_HEADER: 1, failures.ATTEMPTS: -10},
        ),
        "oversized": lambda q, t, b: Hostile(
            _padded_to(b, too_big),
            t,
            f"message body is {too_big} bytes; the limit is {MAX_BODY_BYTES}",
        ),
        "oversized-and-not-json": lambda q, t, b: Hostile(
            b"\xff" * (4 * MAX_BODY_BYTES),
            t,
            f"message body is {4 * MAX_BODY_BYTES} bytes; the limit is {MAX_BODY_BYTES}",
        ),
    }


# No "message_id missing" here: aiormq gives every message it publishes a random
# message_id when it has none, so no aio-pika client can send one without. Other
# clients can; the shell's answer to that is tested below, at the shell alone.
CASES = _hostile_cases()
QUEUES = ("payment", "invoice", "email", "production")


@pytest.fixture
async def channel(settings: Settings) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    """A plain (not robust) channel: a robust one remembers the first declaration of a
    queue, so `depth` (a passive declare) on it keeps answering the first count."""
    connection = await aio_pika.connect(settings.rabbit_url.get_secret_value())
    async with connection:
        yield await connection.channel(publisher_confirms=True)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("queue_key", QUEUES)
async def test_a_malformed_message_is_dead_lettered_and_changes_nothing(
    pipeline: Pipeline,
    paid: Paid,
    purge_queues: Topology,
    channel: aio_pika.abc.AbstractChannel,
    engine: AsyncEngine,
    queue_key: str,
    case: str,
) -> None:
    queue = purge_queues.queues[queue_key]
    message_type, body = valid_body(queue_key, paid)
    hostile = CASES[case](queue_key, message_type, body)
    test_id = uuid.uuid4().hex
    before = await snapshot(engine, pipeline, paid.checkout_id)

    await channel.default_exchange.publish(
        aio_pika.Message(
            hostile.body,
            message_id=hostile.message_id,
            correlation_id=paid.checkout_id,
            type=hostile.message_type,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            headers={**hostile.headers, TEST_ID: test_id},
        ),
        routing_key=queue.name,
    )

    [dead] = await take(channel, queue.dlq, 1)
    headers = dead.headers
    assert headers[TEST_ID] == test_id
    assert dead.body == hostile.body
    assert dead.message_id == hostile.message_id
    assert headers[failures.FAILURE_KIND] == "permanent"
    assert headers[failures.ERROR_TYPE] == "PermanentFailure"
    assert hostile.reason in str(headers[failures.ERROR_MESSAGE]), headers[failures.ERROR_MESSAGE]
    assert headers[failures.ORIGINAL_QUEUE] == queue.name
    assert headers[failures.ATTEMPTS] == 1

    # The shell's one line in the checkout's timeline, written after the ack.
    async def dead_letter_lines() -> int:
        return (await snapshot(engine, pipeline, paid.checkout_id)).dead_letter_lines

    await eventually(
        dead_letter_lines,
        until=lambda n: n == before.dead_letter_lines + 1,
        what="the dead-letter timeline line",
    )
    after = await snapshot(engine, pipeline, paid.checkout_id)
    for table, rows in before.tables.items():
        assert after.tables[table] == rows, f"{case} to {queue.name} changed table {table}"
    assert after.tables.keys() == before.tables.keys()
    assert after.service_calls == before.service_calls
    assert await depth(channel, queue.name) == 0
    for delay in set(queue.retry_delays_ms):
        assert await depth(channel, f"{queue.name}.wait.{delay}") == 0


def test_the_size_limit_is_far_above_any_real_message() -> None:
    """The largest OrderPaid the API can produce is a few KiB; the limit is 100x that."""
    _, body = valid_body("invoice", NOWHERE)
    largest = {
        **body,
        "order_name": "\U0001f600" * 200,
        "amount": "9999999999.99",
        "customer": {"email": "a" * 64 + "@" + "b" * 251 + ".com", "name": "\U0001f600" * 200},
    }
    size = len(OrderPaid.model_validate(largest).model_dump_json().encode())
    assert size < 4 * 1024
    assert 64 * size <= MAX_BODY_BYTES


# ---- the shell alone: the size limit's boundary and hostile attempt counts -----------


@dataclass
class FakeRaw:
    """The parts of an aio-pika incoming message the shell reads."""

    body: bytes
    type: str | None = "OrderPaid"
    message_id: str | None = field(default_factory=lambda: str(uuid.uuid4()))
    correlation_id: str | None = None
    headers: dict[str, Any] = field(default_factory=lambda: {SCHEMA_VERSION_HEADER: 1})
    timestamp: datetime | None = None


class FakeMessage:
    def __init__(self, raw: FakeRaw) -> None:
        self.raw_message = raw
        self.settled: list[str] = []

    async def ack(self) -> None:
        self.settled.append("ack")

    async def nack(self, requeue: bool = True) -> None:
        self.settled.append("nack")


class FakePublisher:
    def __init__(self) -> None:
        self.sent: list[Outgoing] = []

    async def publish(self, outgoing: Outgoing) -> None:
        self.sent.append(outgoing)


@dataclass
class Shell:
    consumer: QueueConsumer
    publisher: FakePublisher
    handled: list[Delivery]
    fail_with: list[Exception]

    async def deliver(self, raw: FakeRaw) -> FakeMessage:
        message = FakeMessage(raw)
        await self.consumer(message)  # type: ignore[arg-type]
        return message


@pytest.fixture
def shell(topology: Topology) -> Shell:
    handled: list[Delivery] = []
    fail_with: list[Exception] = []

    async def handle(event: OrderPaid, delivery: Delivery) -> None:
        handled.append(delivery)
        if fail_with:
            raise fail_with.pop(0)

    publisher = FakePublisher()
    consumer = QueueConsumer(topology.queues["invoice"], jitter=0)
    consumer.bind({OrderPaid: handle}, publisher)  # type: ignore[arg-type]
    return Shell(consumer, publisher, handled, fail_with)


async def test_a_body_of_exactly_the_limit_is_handled_one_byte_more_is_not(shell: Shell) -> None:
    _, body = valid_body("invoice", NOWHERE)
    at_limit = await shell.deliver(FakeRaw(_padded_to(body, MAX_BODY_BYTES)))
    assert at_limit.settled == ["ack"]
    assert len(shell.handled) == 1
    assert shell.publisher.sent == []

    over = await shell.deliver(FakeRaw(_padded_to(body, MAX_BODY_BYTES + 1)))
    assert over.settled == ["ack"]
    assert len(shell.handled) == 1  # never reached the handler
    [copy] = shell.publisher.sent
    assert copy.routing_key == shell.consumer.queue.dlq
    assert copy.headers[failures.ERROR_MESSAGE] == (
        f"message body is {MAX_BODY_BYTES + 1} bytes; the limit is {MAX_BODY_BYTES}"
    )
    assert copy.headers[failures.FAILURE_KIND] == "permanent"


async def test_the_size_is_checked_before_anything_else(shell: Shell) -> None:
    """Unknown type, bad id, future version and not JSON: only the size is reported."""
    raw = FakeRaw(
        b"\xff" * (MAX_BODY_BYTES + 10),
        type=None,
        message_id="nope",
        headers={SCHEMA_VERSION_HEADER: 99},
    )
    await shell.deliver(raw)
    [copy] = shell.publisher.sent
    assert copy.headers[failures.ERROR_MESSAGE].startswith(
        f"message body is {MAX_BODY_BYTES + 10} bytes"
    )


async def test_a_smaller_limit_can_be_set_per_consumer(shell: Shell) -> None:
    consumer = QueueConsumer(shell.consumer.queue, max_body_bytes=100)
    consumer.bind({OrderPaid: _never}, shell.publisher)  # type: ignore[arg-type]
    _, body = valid_body("invoice", NOWHERE)
    message = FakeMessage(FakeRaw(_dumps(body)))
    await consumer(message)  # type: ignore[arg-type]
    [copy] = shell.publisher.sent
    assert "the limit is 100" in copy.headers[failures.ERROR_MESSAGE]


async def _never(event: OrderPaid, delivery: Delivery) -> None:
    raise AssertionError("an oversized message reached its handler")


@pytest.mark.parametrize("attempts", [-1, -4, -10, -(2**31), True, "3", 2.5, None])
async def test_a_hostile_attempt_count_is_not_believed(shell: Shell, attempts: object) -> None:
    """x-attempts is ours; a negative one used to index the retry delays from the end
    (or past it: IndexError, and the message was never settled)."""
    shell.fail_with.append(failures.TransientFailure("503"))
    _, body = valid_body("invoice", NOWHERE)
    raw = FakeRaw(_dumps(body), headers={SCHEMA_VERSION_HEADER: 1, failures.ATTEMPTS: attempts})
    message = await shell.deliver(raw)
    assert message.settled == ["ack"]
    [delivery] = shell.handled
    assert delivery.attempt == 1
    [copy] = shell.publisher.sent
    assert copy.routing_key == shell.consumer.queue.wait_queue(1)
    assert copy.headers[failures.ATTEMPTS] == 1


@pytest.mark.parametrize("message_id", [None, "", "   ", "0" * 33])
async def test_a_missing_or_blank_message_id_is_dead_lettered(
    shell: Shell, message_id: str | None
) -> None:
    _, body = valid_body("invoice", NOWHERE)
    message = await shell.deliver(FakeRaw(_dumps(body), message_id=message_id))
    assert message.settled == ["ack"]
    assert shell.handled == []
    [copy] = shell.publisher.sent
    assert copy.routing_key == shell.consumer.queue.dlq
    assert copy.headers[failures.ERROR_MESSAGE] == f"message_id {message_id!r} is not a UUID"


# ---- well-formed forgeries ---------------------------------------------------------
#
# Messages that are valid by their schema but describe something that does not
# exist. What should happen is the same as above: dead-lettered at once, nothing
# written, nothing called.


def _forged(queue: str, paid: Paid) -> tuple[Paid, dict[str, Any]]:
    """A checkout that does not exist, and a valid body of `queue`'s type about it."""
    ghost = Paid(str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4()), paid.amount)
    return ghost, valid_body(queue, ghost)[1]


@pytest.mark.parametrize(
    ("queue_key", "message_type"),
    [
        # Once they charged, e-mailed and produced first and failed on a foreign key
        # after (retried as transient): now each checks the payment or checkout first.
        ("payment", "ChargePayment"),
        *[(key, "OrderPaid") for key in ("invoice", "email", "production")],
    ],
)
async def test_a_message_about_a_checkout_that_does_not_exist_changes_nothing(
    pipeline: Pipeline,
    paid: Paid,
    purge_queues: Topology,
    channel: aio_pika.abc.AbstractChannel,
    engine: AsyncEngine,
    queue_key: str,
    message_type: str,
) -> None:
    queue = purge_queues.queues[queue_key]
    ghost, body = _forged(queue_key, paid)
    before = await snapshot(engine, pipeline, paid.checkout_id)

    await channel.default_exchange.publish(
        aio_pika.Message(
            _dumps(body),
            message_id=str(uuid.uuid4()),
            correlation_id=body["checkout_id"],
            type=message_type,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            headers={SCHEMA_VERSION_HEADER: 1},
        ),
        routing_key=queue.name,
    )

    # Wait until the message has come to rest: in some dead-letter queue, and every
    # consumed and wait queue empty (a retried message sits in a wait queue).
    async def at_rest() -> tuple[int, int]:
        dead = busy = 0
        for q in purge_queues.queues.values():
            dead += await depth(channel, q.dlq)
            busy += await depth(channel, q.name)
            for delay in set(q.retry_delays_ms):
                busy += await depth(channel, f"{q.name}.wait.{delay}")
        return dead, busy

    await eventually(at_rest, until=lambda r: r[0] >= 1 and r[1] == 0, what="at rest")
    after = await snapshot(engine, pipeline, paid.checkout_id)
    assert after.service_calls == before.service_calls, "an external service was called"
    [dead] = await take(channel, queue.dlq, 1)
    assert dead.headers[failures.FAILURE_KIND] == "permanent"
    assert dead.headers[failures.ATTEMPTS] == 1
    error = str(dead.headers[failures.ERROR_MESSAGE])
    assert ghost.checkout_id in error or ghost.order_id in error, error  # names what is missing
    for table, rows in before.tables.items():
        assert after.tables[table] == rows, f"changed table {table}"
