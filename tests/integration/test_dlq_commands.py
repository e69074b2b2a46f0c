"""`checkout dlq` against the real broker and database, as an operator runs it.

Messages are put into a dead-letter queue by publishing straight to `<queue>.dlq`
with the failure headers the consumer shell writes. Nothing consumes the
namespace's queues during these tests; what a command sent is read back with
`basic.get`. The commands run in a worker thread, since each one runs its own
event loop (`asyncio.run`) as it does from a shell.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika
import pytest
from typer.testing import CliRunner, Result

from infra.messaging import failures
from infra.messaging.publisher import Outgoing, Publisher
from infra.messaging.topology import ConsumedQueue, Topology
from infra.settings import Settings
from operations.cli import dlq as dlq_cli
from operations.cli.dlq import dlq_app
from tests.support.amqp import depth, take

pytestmark = pytest.mark.integration

runner = CliRunner()
FAILED_AT = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)
SENT_AT = datetime(2026, 11, 22, 8, 59, 59, tzinfo=UTC)


async def cli(*args: str, actor: str = "tester", **env: str) -> Result:
    """Run `checkout dlq ARGS` as from a shell (stdout is a pipe, so output is JSON)."""
    environment = {"CHECKOUT_ACTOR": actor, **env}
    return await asyncio.to_thread(lambda: runner.invoke(dlq_app, list(args), env=environment))


@pytest.fixture
async def publisher(settings: Settings, purge_queues: Topology) -> AsyncIterator[Publisher]:
    publisher = await Publisher.connect(settings.rabbit_url.get_secret_value())
    yield publisher
    await publisher.close()


async def dead_letter(publisher: Publisher, queue: ConsumedQueue, count: int) -> list[Outgoing]:
    """Put `count` messages into `queue.dlq` as the consumer shell would have."""
    sent = []
    for n in range(count):
        outgoing = Outgoing(
            exchange="",
            routing_key=queue.dlq,
            body=json.dumps({"order_id": str(uuid.uuid4()), "n": n}).encode(),
            message_id=uuid.uuid4(),
            correlation_id=uuid.uuid4(),
            message_type="OrderPaid",
            headers={
                "x-schema-version": 1,
                failures.ORIGINAL_QUEUE: queue.name,
                failures.ATTEMPTS: 4,
                failures.FIRST_FAILURE_AT: FAILED_AT.isoformat(),
                failures.LAST_FAILURE_AT: (FAILED_AT + timedelta(seconds=30)).isoformat(),
                failures.ERROR_TYPE: "TransientFailure",
                failures.ERROR_MESSAGE: "email service answered 503",
                failures.FAILURE_KIND: "transient",
            },
            timestamp=SENT_AT,
        )
        await publisher.publish(outgoing)
        sent.append(outgoing)
    return sent


def ids(messages: list[Outgoing]) -> list[str]:
    return [str(m.message_id) for m in messages]


async def ids_in(channel: aio_pika.abc.AbstractChannel, queue: str) -> list[str | None]:
    """Take every message of `queue` (removing them) and return their ids in order."""
    return [m.message_id for m in await take(channel, queue, await depth(channel, queue))]


def output(result: Result) -> Any:
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def cells(text: str) -> list[str]:
    """The stripped cells of every table line in `text`, in order."""
    return [cell.strip() for line in text.splitlines() for cell in line.split("│")[1:-1]]


async def test_list_shows_every_dead_letter_queue_with_its_depth(
    publisher: Publisher, purge_queues: Topology
) -> None:
    topology = purge_queues
    await dead_letter(publisher, topology.queues["email"], 2)
    await dead_letter(publisher, topology.queues["invoice"], 1)

    listed = output(await cli("list", "--json"))

    assert listed == [
        {"queue": q.name, "dlq": q.dlq, "messages": {"email": 2, "invoice": 1}.get(key, 0)}
        for key, q in topology.queues.items()
    ]


async def test_show_returns_the_messages_with_their_headers_and_leaves_them_in_order(
    publisher: Publisher, purge_queues: Topology, channel: aio_pika.abc.AbstractChannel
) -> None:
    queue = purge_queues.queues["email"]
    sent = await dead_letter(publisher, queue, 3)

    shown = output(await cli("show", "email", "--json"))

    assert [m["message_id"] for m in shown] == ids(sent)
    first = shown[0]
    assert set(first) == {"message_id", "correlation_id", "headers", "body"}
    assert first["correlation_id"] == str(sent[0].correlation_id)
    assert first["body"] == json.loads(sent[0].body)
    assert first["headers"] == sent[0].headers
    assert await depth(channel, queue.dlq) == 3
    assert await ids_in(channel, queue.dlq) == ids(sent)


async def test_show_takes_any_name_of_the_queue_and_a_limit(
    publisher: Publisher, purge_queues: Topology
) -> None:
    queue = purge_queues.queues["invoice"]
    sent = await dead_letter(publisher, queue, 3)

    for name in (queue.name, queue.dlq, "invoice"):
        shown = output(await cli("show", name, "--limit", "2", "--json"))
        assert [m["message_id"] for m in shown] == ids(sent)[:2]


async def test_show_gives_a_body_that_is_not_json_as_text(
    publisher: Publisher, purge_queues: Topology
) -> None:
    queue = purge_queues.queues["production"]
    await publisher.publish(
        Outgoing(
            exchange="",
            routing_key=queue.dlq,
            body=b"{not json",
            message_id="not-a-uuid",
            correlation_id=None,
            message_type="OrderPaid",
            headers={failures.ATTEMPTS: 1, failures.FAILURE_KIND: "permanent"},
        )
    )

    [shown] = output(await cli("show", "production", "--json"))

    assert shown["body"] == "{not json"
    assert shown["message_id"] == "not-a-uuid"
    assert shown["correlation_id"] is None


@pytest.mark.parametrize("columns", [80, 200])
async def test_show_on_a_terminal_shows_the_attempts_and_the_error_at_80_columns_and_wider(
    publisher: Publisher,
    purge_queues: Topology,
    monkeypatch: pytest.MonkeyPatch,
    columns: int,
) -> None:
    queue = purge_queues.queues["email"]
    sent = await dead_letter(publisher, queue, 2)
    monkeypatch.setattr(dlq_cli, "is_terminal", lambda: True)

    result = await cli("show", "email", COLUMNS=str(columns))

    assert result.exit_code == 0, result.stderr
    text = result.stdout
    assert max(len(line) for line in text.splitlines()) <= columns
    assert f"{queue.dlq}: 2 of 2 messages" in text
    for message in sent:  # the ids whole, not cut to fit
        assert str(message.message_id) in text
        assert str(message.correlation_id) in text
    shown = cells(text)
    assert shown.count("4") == 2  # each message's attempts, a cell of its own
    assert shown.count("TransientFailure") == 2
    assert shown.count("email service answered 503") == 2
    assert "Attempts" in text
    if columns >= 120:  # room for the table: one column each, under one header line
        [header] = [line for line in text.splitlines() if "Attempts" in line]
        assert "Message id / checkout id" in header
        assert "Error" in header


async def test_show_and_history_on_a_terminal_print_brackets_in_the_data_as_they_are(
    publisher: Publisher,
    purge_queues: Topology,
    monkeypatch: pytest.MonkeyPatch,
    clean_db: object,
) -> None:
    queue = purge_queues.queues["email"]
    error = "bad value [/] near [errno 5]"
    await publisher.publish(
        Outgoing(
            exchange="",
            routing_key=queue.dlq,
            body=b"{}",
            message_id="m-[1]",
            correlation_id=None,
            message_type="OrderPaid",
            headers={failures.ERROR_TYPE: "ValueError", failures.ERROR_MESSAGE: error},
        )
    )
    await publisher.publish(
        Outgoing(
            exchange="",
            routing_key=queue.dlq,
            body=b"{}",
            message_id="m-2",
            correlation_id=None,
            message_type="OrderPaid",
            headers={failures.ATTEMPTS: 2},
        )
    )
    output(await cli("purge", "email", "--message-id", "m-2", "--yes", "--reason", "[/]"))
    monkeypatch.setattr(dlq_cli, "is_terminal", lambda: True)

    shown = await cli("show", "email", COLUMNS="200")
    history = await cli("history", COLUMNS="200")

    assert shown.exit_code == 0, shown.stderr
    assert "m-[1]" in shown.stdout
    assert error in shown.stdout
    assert history.exit_code == 0, history.stderr
    assert "[/]" in cells(history.stdout)


async def test_replay_of_one_message_moves_only_that_one_to_its_own_queue(
    publisher: Publisher, purge_queues: Topology, channel: aio_pika.abc.AbstractChannel
) -> None:
    topology = purge_queues
    queue = topology.queues["email"]
    sent = await dead_letter(publisher, queue, 3)
    chosen = sent[1]

    summary = output(await cli("replay", "email", "--message-id", str(chosen.message_id)))

    assert summary == {
        "queue": queue.name,
        "replayed": 1,
        "message_ids": [str(chosen.message_id)],
        "missing": [],
        "dry_run": False,
    }
    [replayed] = await take(channel, queue.name, 1)
    assert replayed.message_id == str(chosen.message_id)
    assert replayed.correlation_id == str(chosen.correlation_id)
    assert replayed.body == chosen.body
    assert replayed.type == "OrderPaid"
    assert replayed.content_type == "application/json"
    assert replayed.timestamp == SENT_AT
    assert replayed.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert failures.ATTEMPTS not in replayed.headers
    assert replayed.headers["x-replay-count"] == 1
    assert replayed.headers["x-replayed-at"]
    for kept in (
        failures.FIRST_FAILURE_AT,
        failures.LAST_FAILURE_AT,
        failures.ERROR_TYPE,
        failures.ORIGINAL_QUEUE,
        "x-schema-version",
    ):
        assert replayed.headers[kept] == chosen.headers[kept]
    assert await ids_in(channel, queue.dlq) == [ids(sent)[0], ids(sent)[2]]
    # Its own queue only: the other consumers of order.paid do not see it again.
    for other in ("invoice", "production"):
        assert await depth(channel, topology.queues[other].name) == 0


async def test_replay_of_all_at_a_rate_moves_every_message_in_order_no_faster(
    publisher: Publisher, purge_queues: Topology, channel: aio_pika.abc.AbstractChannel
) -> None:
    queue = purge_queues.queues["invoice"]
    sent = await dead_letter(publisher, queue, 10)

    started = time.monotonic()
    summary = output(await cli("replay", "invoice.dlq", "--all", "--rate", "20"))
    elapsed = time.monotonic() - started

    assert summary["replayed"] == 10
    assert summary["message_ids"] == ids(sent)
    assert elapsed >= 9 / 20
    assert await depth(channel, queue.dlq) == 0
    assert await ids_in(channel, queue.name) == ids(sent)


async def test_a_dry_run_moves_nothing_and_records_nothing(
    publisher: Publisher,
    purge_queues: Topology,
    channel: aio_pika.abc.AbstractChannel,
    clean_db: object,
) -> None:
    queue = purge_queues.queues["email"]
    sent = await dead_letter(publisher, queue, 3)

    summary = output(await cli("replay", "email", "--all", "--dry-run"))

    assert summary == {
        "queue": queue.name,
        "replayed": 3,
        "message_ids": ids(sent),
        "missing": [],
        "dry_run": True,
    }
    assert await depth(channel, queue.name) == 0
    assert await ids_in(channel, queue.dlq) == ids(sent)
    assert output(await cli("history", "--json")) == []


async def test_replay_of_ids_not_there_replays_the_others_and_fails(
    publisher: Publisher,
    purge_queues: Topology,
    channel: aio_pika.abc.AbstractChannel,
    clean_db: object,
) -> None:
    queue = purge_queues.queues["email"]
    [present] = await dead_letter(publisher, queue, 1)
    absent = str(uuid.uuid4())

    result = await cli("replay", "email", "--message-id", str(present.message_id), absent)

    assert result.exit_code == 1
    assert json.loads(result.stdout) == {
        "queue": queue.name,
        "replayed": 1,
        "message_ids": [str(present.message_id)],
        "missing": [absent],
        "dry_run": False,
    }
    assert result.stderr == (
        f"error: 1 of the given message ids is not in {queue.dlq}: {absent} "
        "(`checkout dlq show email` lists the ids it holds)\n"
    )
    assert await ids_in(channel, queue.name) == [str(present.message_id)]
    [entry] = output(await cli("history", "--json"))
    assert (entry["messages"], entry["missing"]) == (1, [absent])
    assert entry["outcome"] == "incomplete"  # not all that was asked for was done


@pytest.mark.parametrize("action", ["purge", "replay"])
async def test_a_purge_or_replay_that_finds_none_of_its_ids_fails_and_is_recorded_so(
    publisher: Publisher,
    purge_queues: Topology,
    channel: aio_pika.abc.AbstractChannel,
    clean_db: object,
    monkeypatch: pytest.MonkeyPatch,
    action: str,
) -> None:
    queue = purge_queues.queues["email"]
    sent = await dead_letter(publisher, queue, 2)
    confirm = ["--yes"] if action == "purge" else []

    result = await cli(action, "email", "--message-id", "nosuch", *confirm, "--reason", "r")

    assert result.exit_code == 1
    assert "nosuch" in result.stderr
    assert json.loads(result.stdout)["message_ids"] == []
    assert await depth(channel, queue.name) == 0
    assert await ids_in(channel, queue.dlq) == ids(sent)
    [entry] = output(await cli("history", "--json"))
    assert (entry["action"], entry["messages"], entry["message_ids"]) == (action, 0, [])
    assert entry["missing"] == ["nosuch"]
    assert entry["reason"] == "r"
    assert entry["outcome"] == "incomplete"
    monkeypatch.setattr(dlq_cli, "is_terminal", lambda: True)
    table = await cli("history", COLUMNS="200")
    assert table.exit_code == 0, table.stderr
    assert {"incomplete", "1 not found"} <= set(cells(table.stdout))


async def test_purge_drops_only_the_selected_messages(
    publisher: Publisher, purge_queues: Topology, channel: aio_pika.abc.AbstractChannel
) -> None:
    queue = purge_queues.queues["production"]
    sent = await dead_letter(publisher, queue, 3)

    refused = await cli("purge", "production", "--message-id", str(sent[1].message_id))
    summary = output(
        await cli("purge", "production", "--message-id", str(sent[1].message_id), "--yes")
    )

    assert refused.exit_code == 2
    assert summary == {
        "queue": queue.name,
        "purged": 1,
        "message_ids": [ids(sent)[1]],
        "missing": [],
    }
    assert await depth(channel, queue.name) == 0
    assert await ids_in(channel, queue.dlq) == [ids(sent)[0], ids(sent)[2]]


async def test_purge_of_all_empties_the_dead_letter_queue(
    publisher: Publisher, purge_queues: Topology, channel: aio_pika.abc.AbstractChannel
) -> None:
    queue = purge_queues.queues["invoice"]
    sent = await dead_letter(publisher, queue, 4)

    summary = output(await cli("purge", "invoice", "--all", "--yes"))

    assert summary["purged"] == 4
    assert summary["message_ids"] == ids(sent)
    assert await depth(channel, queue.dlq) == 0


async def test_history_shows_each_replay_and_purge_newest_first(
    publisher: Publisher, purge_queues: Topology, clean_db: object
) -> None:
    queue = purge_queues.queues["email"]
    sent = await dead_letter(publisher, queue, 3)

    output(
        await cli(
            "replay",
            "email",
            "--message-id",
            str(sent[0].message_id),
            "--reason",
            "mail server is back",
            actor="alice",
        )
    )
    output(
        await cli("purge", "email.dlq", "--all", "--yes", "--reason", "test orders", actor="bob")
    )
    history = output(await cli("history", "--json"))

    assert [(h["action"], h["actor"]) for h in history] == [("purge", "bob"), ("replay", "alice")]
    purged, replayed = history
    assert set(replayed) == {
        "id",
        "at",
        "actor",
        "action",
        "queue",
        "dlq",
        "messages",
        "message_ids",
        "missing",
        "reason",
        "outcome",
    }
    assert replayed["queue"] == queue.name
    assert replayed["dlq"] == queue.dlq
    assert replayed["messages"] == 1
    assert replayed["message_ids"] == [ids(sent)[0]]
    assert replayed["reason"] == "mail server is back"
    assert replayed["outcome"] == "completed"
    assert purged["messages"] == 2
    assert purged["message_ids"] == ids(sent)[1:]
    assert purged["reason"] == "test orders"
    assert datetime.fromisoformat(purged["at"]) >= datetime.fromisoformat(replayed["at"])


async def test_a_queue_the_broker_does_not_have_is_a_failure_saying_what_to_do(
    settings: Settings,
) -> None:
    result = await cli("show", "email", CHECKOUT_NAMESPACE=f"{settings.namespace}_undeclared")

    assert result.exit_code == 1
    assert "checkout up" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


async def test_an_unreachable_broker_is_one_line_saying_what_to_start() -> None:
    result = await cli("list", CHECKOUT_RABBIT_URL="amqp://guest:guest@127.0.0.1:1/")

    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "error: RabbitMQ at 127.0.0.1:1 is not answering: start it (rabbitmq-server -detached, "
        "or docker compose up -d rabbitmq) or set CHECKOUT_RABBIT_URL"
    ]
    assert result.stdout == ""


async def test_an_unreachable_database_stops_a_replay_before_anything_moves(
    publisher: Publisher, purge_queues: Topology, channel: aio_pika.abc.AbstractChannel
) -> None:
    queue = purge_queues.queues["email"]
    sent = await dead_letter(publisher, queue, 2)

    result = await cli(
        "replay",
        "email",
        "--all",
        CHECKOUT_DATABASE_URL="postgresql+psycopg://postgres@127.0.0.1:1/checkout",
    )

    assert result.exit_code == 1
    [line] = result.stderr.strip().splitlines()
    assert "PostgreSQL at 127.0.0.1:1 is not answering: start it" in line
    assert await depth(channel, queue.name) == 0
    assert await ids_in(channel, queue.dlq) == ids(sent)
