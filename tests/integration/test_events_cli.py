"""`checkout events list|backfill` as from a shell: output, exit codes, audit, Ctrl-C."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import subprocess
import sys
import uuid
from datetime import UTC, datetime

import aio_pika
import pytest
from typer.testing import CliRunner, Result

from infra.db.session import UnitOfWork
from infra.localports import free_port
from infra.messaging.relay import OutboxRelay
from infra.messaging.topology import Topology
from infra.settings import Settings
from operations.cli.dlq import dlq_app
from operations.cli.events import events_app
from tests.support.amqp import depth, take
from tests.support.polling import eventually
from tests.support.seed import publish_paid

pytestmark = pytest.mark.integration

runner = CliRunner()


async def cli(app: object, *args: str) -> Result:
    """Run a `checkout` sub-command (stdout is a pipe, so output is JSON)."""
    env = {"CHECKOUT_ACTOR": "tester"}
    return await asyncio.to_thread(lambda: runner.invoke(app, list(args), env=env))  # type: ignore[arg-type]


async def paid_ids(uow: UnitOfWork, relay: OutboxRelay, count: int) -> list[str]:
    """`count` OrderPaid through the outbox and the relay; their message ids."""
    return [message_id for message_id, _ in await publish_paid(uow, relay, count)]


async def offset_of(message_id: str) -> int:
    """The log offset of an event, found with `checkout events list --json`."""

    async def listed() -> list[dict[str, object]]:
        result = await cli(events_app, "list", "--since", "10m", "--json")
        assert result.exit_code == 0, result.output
        return [e for e in json.loads(result.stdout) if e["message_id"] == message_id]

    [event] = await eventually(listed, what=f"{message_id} in the log")
    offset = event["offset"]
    assert isinstance(offset, int)
    return offset


async def test_list_prints_one_json_document_with_every_field(
    uow: UnitOfWork, relay: OutboxRelay, topology: Topology
) -> None:
    [message_id] = await paid_ids(uow, relay, 1)

    offset = await offset_of(message_id)

    result = await cli(events_app, "list", "--since", "10m", "--type", "OrderPaid")
    [event] = [e for e in json.loads(result.stdout) if e["message_id"] == message_id]
    assert event["offset"] == offset
    assert set(event) == {
        "offset",
        "message_id",
        "correlation_id",
        "type",
        "routing_key",
        "timestamp",
        "headers",
        "body",
    }
    assert event["type"] == "OrderPaid"
    assert event["headers"] == {"x-schema-version": 1}
    order = event["body"]["order_id"]
    only = await cli(events_app, "list", "--since", "10m", "--order", order)
    assert [e["message_id"] for e in json.loads(only.stdout)] == [message_id]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["list", "--since", "yesterday"], "RFC 3339"),
        (["list", "--until", "5x"], "2h"),
        (["list", "--since", "1h", "--until", "2h"], "--until is before --since"),
        (["backfill", "--to-queue", "q", "--reason", "r"], "--since TIME"),
        (["backfill", "--to-queue", "q", "--since", "1h"], "--reason"),
        (
            ["backfill", "--to-queue", "q", "--since", "1h", "--reason", "r", "--rate", "0"],
            "--rate",
        ),
    ],
)
async def test_bad_usage_exits_2_saying_what_is_accepted(
    topology: Topology, args: list[str], says: str
) -> None:
    result = await cli(events_app, *args)
    assert result.exit_code == 2
    assert says in result.output


async def test_backfill_into_a_missing_queue_exits_1_and_creates_nothing(
    topology: Topology, channel: aio_pika.abc.AbstractChannel
) -> None:
    missing = f"nobody-{uuid.uuid4().hex[:8]}"
    result = await cli(
        events_app, "backfill", "--to-queue", missing, "--since", "1h", "--reason", "r"
    )
    assert result.exit_code == 1
    assert f"queue '{missing}' does not exist" in result.output
    underlay = await channel.get_underlay_channel()
    with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):
        await underlay.queue_declare(missing, passive=True)


async def test_backfill_prints_what_it_copied_and_the_audit_log_shows_it(
    uow: UnitOfWork,
    relay: OutboxRelay,
    topology: Topology,
    channel: aio_pika.abc.AbstractChannel,
    team_queue: str,
) -> None:
    ids = await paid_ids(uow, relay, 2)
    start = await offset_of(ids[0])
    args = ["--to-queue", team_queue, "--since-offset", str(start), "--reason", "late team"]

    dry = await cli(events_app, "backfill", *args, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.stdout)["message_ids"] == ids
    assert json.loads(dry.stdout)["dry_run"] is True
    assert await depth(channel, team_queue) == 0

    result = await cli(
        events_app, "backfill", *args, "--type", "OrderPaid", "--rate", "100", "--json"
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["copied"] == 2
    assert summary["message_ids"] == ids
    assert summary["source"] == topology.event_log
    assert [m.message_id for m in await take(channel, team_queue, 2)] == ids

    history = json.loads((await cli(dlq_app, "history", "--json")).stdout)
    [entry] = [h for h in history if h["queue"] == team_queue]
    assert entry["action"] == "backfill"
    assert entry["actor"] == "tester"
    assert entry["reason"] == "late team"
    assert entry["messages"] == 2
    assert entry["outcome"] == "completed"
    assert entry["details"]["types"] == ["OrderPaid"]
    assert entry["details"]["since_offset"] == start
    assert entry["details"]["first_offset"] == start


async def test_ctrl_c_stops_a_backfill_which_says_how_to_resume(
    settings: Settings,
    uow: UnitOfWork,
    relay: OutboxRelay,
    topology: Topology,
    channel: aio_pika.abc.AbstractChannel,
    team_queue: str,
) -> None:
    ids = await paid_ids(uow, relay, 8)
    start = await offset_of(ids[0])
    command = [
        sys.executable,
        "-m",
        "infra.cli",
        "events",
        "backfill",
        "--to-queue",
        team_queue,
        "--since-offset",
        str(start),
        "--rate",
        "1",  # 8 s for the 8: room to interrupt it after the second on a loaded machine
        "--reason",
        "slow copy",
    ]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "CHECKOUT_ACTOR": "tester"},
        text=True,
    )
    try:
        await eventually(
            lambda: depth(channel, team_queue), until=lambda n: n >= 2, what="some copies"
        )
        process.send_signal(signal.SIGINT)
        _, stderr = await asyncio.to_thread(process.communicate, timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 1, stderr
    assert "the backfill stopped (interrupted (Ctrl-C))" in stderr
    copied = await depth(channel, team_queue)
    assert 2 <= copied < 8
    resume = stderr.split("to go on from there: ", 1)[1].strip()
    words = shlex.split(resume)
    assert words[:3] == ["checkout", "events", "backfill"]
    assert "--since-offset" in words

    result = await cli(events_app, *words[2:])
    assert result.exit_code == 0, result.output
    received = [m.message_id for m in await take(channel, team_queue, 8)]
    assert received == ids  # each once, in order
    history = json.loads((await cli(dlq_app, "history", "--json")).stdout)
    entries = sorted((h for h in history if h["queue"] == team_queue), key=lambda h: h["id"])
    assert [(h["outcome"], h["messages"]) for h in entries] == [
        ("interrupted", copied),
        ("completed", 8 - copied),
    ]
    assert datetime.fromisoformat(entries[0]["at"]) <= datetime.now(UTC)


async def test_what_is_down_or_missing_ends_with_one_line_and_exit_1(
    settings: Settings, topology: Topology, team_queue: str
) -> None:
    def run(*args: str, **env: str) -> Result:
        return runner.invoke(events_app, list(args), env={"CHECKOUT_ACTOR": "tester", **env})

    no_topology = await asyncio.to_thread(
        run, "list", "--since", "1h", CHECKOUT_NAMESPACE=f"nothing_{uuid.uuid4().hex[:6]}"
    )
    assert no_topology.exit_code == 1
    assert "does not exist on the broker" in no_topology.output
    assert "checkout declare" in no_topology.output

    port = free_port()
    no_broker = await asyncio.to_thread(
        run, "list", CHECKOUT_RABBIT_URL=f"amqp://guest:guest@127.0.0.1:{port}/"
    )
    assert no_broker.exit_code == 1
    assert f"127.0.0.1:{port}" in no_broker.output
    assert len(no_broker.output.strip().splitlines()) == 1

    base = settings.database_url.get_secret_value().rsplit("/", 1)[0]
    no_database = await asyncio.to_thread(
        run,
        "backfill",
        "--to-queue",
        team_queue,
        "--since",
        "1h",
        "--reason",
        "r",
        CHECKOUT_DATABASE_URL=f"{base.rsplit(':', 1)[0]}:{free_port()}/nowhere",
    )
    assert no_database.exit_code == 1
    assert "nothing was copied" in no_database.output

    for own in (topology.queues["payment"].name, topology.queues["email"].dlq):
        refused = await cli(
            events_app, "backfill", "--to-queue", own, "--since", "1h", "--reason", "r"
        )
        assert refused.exit_code == 2
        assert "take no public events" in refused.output

    into_the_log = await cli(
        events_app, "backfill", "--to-queue", topology.event_log, "--since", "1h", "--reason", "r"
    )
    assert into_the_log.exit_code == 2
    assert "is the event log itself" in into_the_log.output
