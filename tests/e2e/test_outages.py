"""Issue 3's outages, end to end: dead-lettered while a service is down, replayed after.

The system runs with the test suite's short retry schedule (CHECKOUT_RETRY_DELAYS
0.2,0.5,1 s); with the default 1,4,12,30 s the same messages reach the dead-letter
queue in about 50 s.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.support.polling import eventually
from tests.support.system import System, cli

pytestmark = pytest.mark.e2e


async def dlq_depth(system: System, key: str) -> int:
    _, listing = await cli(system, "dlq", "list", "--json")
    return next(q["messages"] for q in listing if q["queue"].endswith(f".{key}"))


async def paid_orders(client: httpx.AsyncClient, system: System, count: int) -> list[str]:
    ids = []
    for i in range(count):
        order = (
            await client.post(
                f"{system.api}/orders",
                json={
                    "order_name": f"Outage poster {i}",
                    "amount": f"{20 + i}.00",
                    "customer": {"email": f"buyer{i}@example.com", "name": "Buyer"},
                },
            )
        ).json()
        await client.post(f"{system.api}/orders/{order['order_id']}/checkout")
        ids.append(order["order_id"])
    for order_id in ids:
        await eventually(
            lambda oid=order_id: _status(client, system, oid),
            until=lambda s: s == "PAID",
            timeout=30,
            what="order PAID",
        )
    return ids


async def _status(client: httpx.AsyncClient, system: System, order_id: str) -> str:
    return str((await client.get(f"{system.api}/orders/{order_id}")).json()["status"])


async def entries(
    client: httpx.AsyncClient, system: System, path: str, order_ids: list[str]
) -> list[dict[str, Any]]:
    found = (await client.get(f"{system.mocks}{path}?include=status_code")).json()
    return [e for e in found if any(oid in json.dumps(e["request"]) for oid in order_ids)]


async def test_production_outage_dead_letters_then_replay_delivers_each_once(
    system: System,
) -> None:
    async with httpx.AsyncClient(headers=system.auth) as client:
        await client.post(f"{system.mocks}/mock/production/outage", json={"down": True})
        orders = await paid_orders(client, system, 3)
        await eventually(
            lambda: dlq_depth(system, "production"),
            until=lambda n: n == 3,
            timeout=60,
            what="three messages in the production dead-letter queue",
        )
        status, shown = await cli(system, "dlq", "show", "production", "--json")
        assert status == 0
        assert {m["body"]["order_id"] for m in shown} == set(orders)
        assert all(m["headers"]["x-failure-kind"] == "transient" for m in shown)
        assert all(m["headers"]["x-original-queue"].endswith(".production") for m in shown)
        # Emails went out while production was down: one each, independently.
        emails = await eventually(
            lambda: entries(client, system, "/mock/emails", orders),
            until=lambda e: len(e) == 3,
            what="three emails",
        )

        await client.post(f"{system.mocks}/mock/production/outage", json={"down": False})
        status, summary = await cli(
            system, "dlq", "replay", "production", "--all", "--reason", "production outage over"
        )
        assert status == 0, summary
        assert summary["replayed"] == 3

        delivered = await eventually(
            lambda: entries(client, system, "/mock/production/orders", orders),
            until=lambda e: sum(x["status_code"] == 201 for x in e) == 3,
            timeout=30,
            what="each production order delivered",
        )
        assert len(delivered) == 3  # one entry (one idempotency key) per order
        assert await dlq_depth(system, "production") == 0
        after = await entries(client, system, "/mock/emails", orders)
        assert [e["attempts"] for e in after] == [e["attempts"] for e in emails] == [1, 1, 1]

        _, history = await cli(system, "dlq", "history", "--json")
        replay = history[0]
        assert replay["action"] == "replay"
        assert replay["actor"] == "ops-e2e"
        assert replay["reason"] == "production outage over"
        assert replay["messages"] == 3


async def test_payment_outage_leaves_pending_then_replay_pays_once(system: System) -> None:
    async with httpx.AsyncClient(headers=system.auth) as client:
        await client.post(f"{system.mocks}/mock/payments/outage", json={"down": True})
        order = (
            await client.post(
                f"{system.api}/orders",
                json={
                    "order_name": "Payment outage poster",
                    "amount": "33.00",
                    "customer": {"email": "pat@example.com", "name": "Pat"},
                },
            )
        ).json()
        checkout = (await client.post(f"{system.api}/orders/{order['order_id']}/checkout")).json()
        await eventually(
            lambda: dlq_depth(system, "payment"),
            until=lambda n: n == 1,
            timeout=60,
            what="the charge in the payment dead-letter queue",
        )
        view = (await client.get(f"{system.api}/checkouts/{checkout['checkout_id']}")).json()
        assert view["state"] == "PAYMENT_PENDING"

        await client.post(f"{system.mocks}/mock/payments/outage", json={"down": False})
        status, summary = await cli(
            system, "dlq", "replay", "payment", "--all", "--reason", "payment service back"
        )
        assert status == 0, summary
        assert summary["replayed"] == 1

        async def state() -> str:
            r = await client.get(f"{system.api}/checkouts/{checkout['checkout_id']}")
            return str(r.json()["state"])

        await eventually(state, until=lambda s: s == "PAID", timeout=30, what="PAID")
        [charge] = await entries(client, system, "/mock/payments", [order["order_id"]])
        assert charge["status_code"] == 201
        assert charge["response"]["status"] == "SUCCESSFUL"


async def test_a_bouncing_address_is_dead_lettered_after_one_attempt(system: System) -> None:
    async with httpx.AsyncClient(headers=system.auth) as client:
        order = (
            await client.post(
                f"{system.api}/orders",
                json={
                    "order_name": "Bounce poster",
                    "amount": "9.00",
                    "customer": {"email": "bounce@example.com", "name": "Bo"},
                },
            )
        ).json()
        await client.post(f"{system.api}/orders/{order['order_id']}/checkout")

        async def dead() -> list[dict[str, Any]]:
            _, shown = await cli(system, "dlq", "show", "email", "--json")
            return [m for m in shown if m["body"]["order_id"] == order["order_id"]]

        [letter] = await eventually(dead, timeout=30, what="the bounced email dead-lettered")
        assert letter["headers"]["x-attempts"] == 1
        assert letter["headers"]["x-failure-kind"] == "permanent"
        assert "422" in letter["headers"]["x-error-message"]
        [email] = await entries(client, system, "/mock/emails", [order["order_id"]])
        assert email["attempts"] == 1
