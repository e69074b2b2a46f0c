"""The system as a user runs it: `checkout up` as a process, driven over HTTP."""

from __future__ import annotations

import asyncio
import json
import signal
import stat
import sys
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from infra.db.migrate import libpq_url
from tests.support.polling import eventually
from tests.support.system import System

pytestmark = pytest.mark.e2e


async def _create_and_checkout(client: httpx.AsyncClient, api: str, amount: str) -> dict[str, Any]:
    order = (
        await client.post(
            f"{api}/orders",
            json={
                "order_name": "E2E poster",
                "amount": amount,
                "customer": {"email": "ada@example.com", "name": "Ada"},
            },
        )
    ).json()
    checkout = await client.post(
        f"{api}/orders/{order['order_id']}/checkout",
        headers={"Idempotency-Key": f"e2e-{order['order_id']}"},
    )
    assert checkout.status_code == 202, checkout.text
    assert checkout.headers["Location"] == f"/checkouts/{checkout.json()['checkout_id']}"
    return dict(checkout.json())


async def test_a_checkout_over_http_ends_paid_with_every_effect(system: System) -> None:
    async with httpx.AsyncClient(headers=system.auth) as client:
        checkout = await _create_and_checkout(client, system.api, "42.00")

        async def state() -> dict[str, Any]:
            return dict(
                (await client.get(f"{system.api}/checkouts/{checkout['checkout_id']}")).json()
            )

        final = await eventually(
            state,
            until=lambda c: c["state"] in ("PAID", "FAILED"),
            timeout=30,
            what="checkout final",
        )
        assert final["state"] == "PAID", final

        async def effects() -> tuple[int, int, int]:
            order_id = checkout["order_id"]
            counts = []
            for path in ("/mock/payments", "/mock/emails", "/mock/production/orders"):
                entries = (await client.get(f"{system.mocks}{path}")).json()
                counts.append(sum(order_id in json.dumps(e["request"]) for e in entries))
            return counts[0], counts[1], counts[2]

        await eventually(
            effects,
            until=lambda c: c == (1, 1, 1),
            timeout=30,
            what="one charge, one email, one production order",
        )
        order = (await client.get(f"{system.api}/orders/{checkout['order_id']}")).json()
        assert order["status"] == "PAID"
        invoice = await eventually(
            lambda: _invoice(client, system.api, checkout["order_id"]), timeout=30, what="invoice"
        )
        assert invoice["amount"] == "42.00"


async def _invoice(client: httpx.AsyncClient, api: str, order_id: str) -> dict[str, Any] | None:
    invoice = (await client.get(f"{api}/orders/{order_id}")).json()["invoice"]
    return dict(invoice) if invoice else None


async def test_the_demo_shows_paid_failed_and_retried_checkouts(system: System) -> None:
    demo = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "infra.cli",
        "demo",
        env=system.env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(demo.communicate(), 120)
    assert demo.returncode == 0, stderr.decode()
    results = json.loads(stdout)
    states = {(r["order_name"], r["state"]) for r in results}
    assert any(state == "FAILED" for _, state in states), states
    assert sum(state == "PAID" for _, state in states) >= 2, states
    flaky = [r for r in results if r["amount"].endswith(".02")]
    assert flaky
    assert flaky[0]["state"] == "PAID"
    # It also cancels two paid orders: one refunded, one already in production (.06).
    cancelled = {r["amount"]: r for r in results if r["cancellation_state"]}
    assert cancelled["35.00"]["cancellation_state"] == "CANCELLED"
    assert cancelled["35.00"]["order_status"] == "CANCELLED"
    assert cancelled["35.00"]["refund"]["status"] == "SUCCEEDED"
    assert cancelled["40.06"]["cancellation_state"] == "REJECTED"
    assert cancelled["40.06"]["order_status"] == "PAID"


async def test_up_made_a_private_development_key_and_printed_where_it_is(system: System) -> None:
    path = Path(system.env["CHECKOUT_DEV_KEY_FILE"])
    token = path.read_text().strip()
    assert token.startswith("ck_")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    output = system.log.read_text(errors="replace")
    assert f'"api_key_file": "{path}"' in output  # the ready banner (JSON on a pipe)
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"{system.api}/orders")).status_code == 401
        authorised = await client.get(f"{system.api}/orders", headers=system.auth)
        assert authorised.status_code == 200


async def test_every_parts_database_connections_are_named_after_it(system: System) -> None:
    """`pg_stat_activity` says which part holds a connection (`application_name`)."""
    url = libpq_url(system.settings.database_url.get_secret_value())
    database = url.rsplit("/", 1)[-1].split("?", 1)[0]
    ns = system.settings.namespace
    parts = {"api", "saga", "relay", "consumer-invoice", "consumer-email", "consumer-production"}

    async def names() -> set[str]:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            rows = await (
                await conn.execute(
                    "SELECT DISTINCT application_name FROM pg_stat_activity WHERE datname = %s",
                    (database,),
                )
            ).fetchall()
        return {name for (name,) in rows}

    found = await eventually(
        names,
        until=lambda seen: {f"{ns}.{part}" for part in parts} <= seen,
        timeout=30,
        what="a connection named after each part",
    )
    assert {f"{ns}.{part}" for part in parts} <= found


async def test_sigterm_stops_every_part_gracefully(system: System) -> None:
    system.process.send_signal(signal.SIGTERM)
    returncode = await asyncio.to_thread(system.process.wait, 60)
    assert returncode == 0, system.output()
    # Every child is gone: nothing answers on the API or mocks port any more.
    async with httpx.AsyncClient(headers=system.auth) as client:
        for url in (system.api, system.mocks):
            with pytest.raises(httpx.TransportError):
                await client.get(f"{url}/health/live")
