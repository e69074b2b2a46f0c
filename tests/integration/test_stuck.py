"""`checkout stuck`: a checkout not final for too long, with what it waits for (its
deadline, its unpublished charge, its charge parked in a dead-letter queue) and the
commands that repair it; exit 1 while anything is stuck, 0 when nothing is."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner, Result

from infra.cli.main import app
from infra.db.session import UnitOfWork
from infra.messaging.topology import Topology
from infra.metrics import registry_for
from infra.settings import Settings
from operations.stuck import count_stuck, parse_duration
from tests.support.seed import aged, park_charge, pending_checkout

pytestmark = pytest.mark.integration

runner = CliRunner()


async def cli(*args: str) -> Result:
    """`checkout stuck ARGS` as from a shell (stdout a pipe: JSON)."""
    return await asyncio.to_thread(lambda: runner.invoke(app, ["stuck", *args]))


def _mine(document: dict[str, Any], checkout_id: uuid.UUID) -> dict[str, Any]:
    [item] = [s for s in document["stuck"] if s["id"] == str(checkout_id)]
    return item


async def test_a_stuck_checkout_is_listed_with_what_it_waits_for_and_the_repair(
    hot_uow: UnitOfWork,
    engine: AsyncEngine,
    purge_queues: Topology,
    channel: aio_pika.abc.AbstractChannel,
) -> None:
    charge = await pending_checkout(hot_uow)
    await aged(engine, charge.checkout_id, 10)
    parked = await park_charge(channel, purge_queues.queues["payment"].name, charge)

    result = await cli("--older-than", "5m", "--json")

    assert result.exit_code == 1, result.output
    document = json.loads(result.stdout)
    assert document["dead_letter_queues_read"] is True
    item = _mine(document, charge.checkout_id)
    assert (item["kind"], item["state"]) == ("checkout", "PAYMENT_PENDING")
    assert item["age_seconds"] >= 600
    waits = {w["what"]: w for w in item["waiting_for"]}
    assert set(waits) >= {"deadline", "outbox", "dead_letter"}
    assert "payment deadline at" in waits["deadline"]["detail"]
    assert waits["outbox"]["detail"].startswith("ChargePayment ")
    assert waits["outbox"]["repair"].startswith("checkout relay")
    letter = waits["dead_letter"]
    assert f"in {purge_queues.queues['payment'].dlq}" in letter["detail"]
    assert "payment service answered 503: down" in letter["detail"]
    assert letter["repair"].startswith(f"checkout dlq replay payment --message-id {parked}")
    # Read, not consumed: the dead letter is still there.
    dlq = await channel.declare_queue(purge_queues.queues["payment"].dlq, passive=True)
    assert dlq.declaration_result.message_count == 1


async def test_young_checkouts_are_not_stuck_and_nothing_stuck_exits_0(
    hot_uow: UnitOfWork,
) -> None:
    charge = await pending_checkout(hot_uow)
    result = await cli("--older-than", "3650d", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["stuck"] == []
    result = await cli("--older-than", "5m")
    assert all(s["id"] != str(charge.checkout_id) for s in json.loads(result.stdout)["stuck"])


async def test_the_gauge_counts_them_by_kind_and_state(
    hot_uow: UnitOfWork, engine: AsyncEngine, settings: Settings
) -> None:
    charge = await pending_checkout(hot_uow)
    await aged(engine, charge.checkout_id, 30)
    async with engine.connect() as conn:
        counts = await count_stuck(conn, datetime.now(UTC), timedelta(minutes=5))
    assert counts[("checkout", "PAYMENT_PENDING")] >= 1
    await cli("--json")  # the command sets it as it reports
    # The gauge is the saga's family (per-process registries: infra.metrics.MEASURED_BY).
    value = registry_for("saga").get_sample_value(
        "checkout_stuck", {"kind": "checkout", "state": "PAYMENT_PENDING"}
    )
    assert value is not None
    assert value >= 1


@pytest.mark.parametrize(
    ("given", "seconds"), [("90s", 90), ("5m", 300), ("2h", 7200), ("1d", 86400), ("45", 45)]
)
def test_durations(given: str, seconds: int) -> None:
    assert parse_duration(given) == timedelta(seconds=seconds)


async def test_a_bad_duration_is_bad_usage() -> None:
    result = await cli("--older-than", "soon")
    assert result.exit_code == 2
    assert "is not a duration" in result.output


async def test_a_cancellation_waiting_for_a_stuck_checkout_is_listed_with_it(
    hot_uow: UnitOfWork, engine: AsyncEngine
) -> None:
    charge = await pending_checkout(hot_uow)
    await aged(engine, charge.checkout_id, 20)
    cancellation_id = uuid.uuid4()
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO cancellations (cancellation_id, order_id, checkout_id, reason, state,"
                " created_at, updated_at) VALUES (:c, :o, :k, 'changed my mind',"
                " 'WAITING_FOR_CHECKOUT', now() - interval '15 minutes', now())"
            ),
            {"c": cancellation_id, "o": charge.order_id, "k": charge.checkout_id},
        )

    result = await cli("--json")

    assert result.exit_code == 1
    document = json.loads(result.stdout)
    item = _mine(document, cancellation_id)
    assert (item["kind"], item["state"]) == ("cancellation", "WAITING_FOR_CHECKOUT")
    [waiting] = item["waiting_for"]
    assert (waiting["what"], waiting["detail"]) == (
        "checkout",
        f"checkout {charge.checkout_id} to end",
    )
    assert _mine(document, charge.checkout_id)["state"] == "PAYMENT_PENDING"
