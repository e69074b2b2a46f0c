"""CONTRACT.md section 11 the README way: a team that subscribes after a few checkouts
gets their `OrderPaid` events from a backfill, once each, and the audit log shows it.

`checkout up` runs the system; the example subscriber and the `checkout` commands run
as processes, as a user runs them.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import httpx
import pytest

from tests.support.polling import eventually
from tests.support.system import ROOT, System, run_cli

pytestmark = pytest.mark.e2e


async def _checkout(client: httpx.AsyncClient, api: str, amount: str) -> str:
    """Create an order, check it out, wait until the checkout is final; its order id."""
    order = (
        await client.post(
            f"{api}/orders",
            json={
                "order_name": "Backfilled poster",
                "amount": amount,
                "customer": {"email": "ada@example.com", "name": "Ada"},
            },
        )
    ).json()
    checkout = (await client.post(f"{api}/orders/{order['order_id']}/checkout")).json()

    async def state() -> str:
        found = (await client.get(f"{api}/checkouts/{checkout['checkout_id']}")).json()
        return str(found["state"])

    await eventually(state, until=lambda s: s in ("PAID", "FAILED"), timeout=30, what="final")
    return str(order["order_id"])


@pytest.fixture
async def billing_queue(system: System) -> AsyncIterator[str]:
    """The late team's queue's name; it and its parking queue deleted after the test."""
    queue = f"billing-{uuid.uuid4().hex[:6]}.order-paid"
    yield queue
    connection = await aio_pika.connect(system.settings.rabbit_url.get_secret_value())
    async with connection:
        channel = await connection.channel()
        for name in (queue, f"{queue}.parked"):
            await channel.queue_delete(name)


async def test_a_late_subscriber_gets_earlier_events_from_a_backfill_once_each(
    system: System, billing_queue: str
) -> None:
    queue = billing_queue
    async with httpx.AsyncClient(headers=system.auth) as client:
        # A few checkouts before the team subscribes: two paid, one declined.
        early = [await _checkout(client, system.api, amount) for amount in ("21.00", "22.00")]
        declined = await _checkout(client, system.api, "23.01")

        subscriber = await asyncio.create_subprocess_exec(
            sys.executable,
            "examples/order_paid_subscriber.py",
            "--queue",
            queue,
            env={**system.env},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=ROOT,
        )
        assert subscriber.stdout is not None
        assert subscriber.stderr is not None
        try:
            listening = await asyncio.wait_for(subscriber.stderr.readline(), 30)
            assert b"listening on" in listening
            # One more after it subscribed: it arrives live, and is in the backfill too.
            live = await _checkout(client, system.api, "24.00")
            printed: list[dict[str, Any]] = [
                json.loads(await asyncio.wait_for(subscriber.stdout.readline(), 30))
            ]
            assert printed[0]["order_id"] == live

            code, out, err = await run_cli(
                system,
                "events",
                "backfill",
                "--to-queue",
                queue,
                "--since",
                "10m",
                "--type",
                "OrderPaid",
                "--rate",
                "50",
                "--reason",
                "billing joined late",
                actor="e2e",
            )
            assert code == 0, err
            summary = json.loads(out)
            assert summary["copied"] == 3  # the three paid orders of this system

            for _ in early:
                printed.append(json.loads(await asyncio.wait_for(subscriber.stdout.readline(), 30)))
        finally:
            subscriber.send_signal(signal.SIGINT)
            _, rest = await asyncio.wait_for(subscriber.communicate(), 30)

    assert sorted(p["order_id"] for p in printed) == sorted([*early, live])
    assert declined not in [p["order_id"] for p in printed]
    assert b"stopped: 3 handled, 1 duplicates, 0 parked" in rest

    code, out, err = await run_cli(system, "dlq", "history", "--json", actor="e2e")
    assert code == 0, err
    [entry] = [h for h in json.loads(out) if h["queue"] == queue]
    assert entry["action"] == "backfill"
    assert entry["actor"] == "e2e"
    assert entry["messages"] == 3
    assert entry["reason"] == "billing joined late"
    assert entry["outcome"] == "completed"

    # The order's trace shows its OrderPaid backfilled into the team's queue.
    code, out, err = await run_cli(system, "trace", early[0], "--json", actor="e2e")
    assert code == 0, err
    assert f"backfilled from {system.env['CHECKOUT_NAMESPACE']}.orders.log to {queue}" in out
