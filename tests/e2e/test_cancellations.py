"""Cancellations as a user meets them: `checkout up` as a process, driven over HTTP.

Every path of CONTRACT.md section 7 through the real processes: a PENDING order, a
PAID one, one already in production (.06: REJECTED), one whose refund fails twice
(.05), one whose payment is still in flight (.03: the first charge answers after
10 s, past the client's timeout), and ten concurrent cancels of one order.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from tests.support.polling import eventually
from tests.support.system import System

pytestmark = pytest.mark.e2e

FINAL = ("CANCELLED", "REJECTED")


class Client:
    def __init__(self, http: httpx.AsyncClient, system: System) -> None:
        self.http = http
        self.api = system.api
        self.mocks = system.mocks

    async def order(self, amount: str) -> str:
        response = await self.http.post(
            f"{self.api}/orders",
            json={
                "order_name": "E2E cancellation",
                "amount": amount,
                "customer": {"email": "ada@example.com", "name": "Ada"},
            },
        )
        assert response.status_code == 201, response.text
        return str(response.json()["order_id"])

    async def checkout(self, order_id: str) -> str:
        response = await self.http.post(f"{self.api}/orders/{order_id}/checkout")
        assert response.status_code == 202, response.text
        return str(response.json()["checkout_id"])

    async def get(self, path: str) -> dict[str, Any]:
        return dict((await self.http.get(f"{self.api}{path}")).json())

    async def paid(self, amount: str) -> str:
        order_id = await self.order(amount)
        checkout_id = await self.checkout(order_id)
        final = await eventually(
            lambda: self.get(f"/checkouts/{checkout_id}"),
            until=lambda c: c["state"] in ("PAID", "FAILED"),
            timeout=30,
            what="checkout final",
        )
        assert final["state"] == "PAID"
        return order_id

    async def in_production(self, order_id: str) -> None:
        async def entries() -> list[Any]:
            return list((await self.http.get(f"{self.mocks}/mock/production/orders")).json())

        await eventually(
            entries,
            until=lambda found: any(order_id in str(e["request"]) for e in found),
            timeout=30,
            what="the order in production",
        )

    async def cancel(self, order_id: str) -> httpx.Response:
        return await self.http.post(
            f"{self.api}/orders/{order_id}/cancel", json={"reason": "e2e: changed my mind"}
        )

    async def settled(self, cancellation_id: str) -> dict[str, Any]:
        return await eventually(
            lambda: self.get(f"/cancellations/{cancellation_id}"),
            until=lambda c: c["state"] in FINAL,
            timeout=60,
            what="cancellation final",
        )

    async def refunds_with(self, key: str) -> list[dict[str, Any]]:
        found = (await self.http.get(f"{self.mocks}/mock/refunds")).json()
        return [e for e in found if e["idempotency_key"] == key]


@pytest.fixture
async def client(system: System) -> Any:
    async with httpx.AsyncClient(headers=system.auth, timeout=10) as http:
        yield Client(http, system)


async def test_a_pending_order_is_cancelled_at_once(client: Client) -> None:
    order_id = await client.order("11.00")
    response = await client.cancel(order_id)
    assert response.status_code == 202
    assert response.headers["Location"] == f"/cancellations/{response.json()['cancellation_id']}"
    assert response.json()["state"] == "CANCELLED"
    assert (await client.get(f"/orders/{order_id}"))["status"] == "CANCELLED"
    refused = await client.http.post(f"{client.api}/orders/{order_id}/checkout")
    assert refused.status_code == 409
    assert refused.json()["type"] == "urn:checkout:problem:order-cancelled"


async def test_a_paid_order_is_refunded_and_cancelled(client: Client) -> None:
    order_id = await client.paid("22.00")
    started = (await client.cancel(order_id)).json()
    final = await client.settled(started["cancellation_id"])
    assert final["state"] == "CANCELLED"
    assert final["refund"]["status"] == "SUCCEEDED"
    order = await client.get(f"/orders/{order_id}")
    assert (order["status"], order["payment"]["status"]) == ("CANCELLED", "REFUNDED")
    assert len(await client.refunds_with(started["cancellation_id"])) == 1
    # order.cancelled: the invoice consumer voids the invoice, the e-mail consumer tells
    # the customer what was refunded.
    voided = await eventually(
        lambda: client.get(f"/orders/{order_id}"),
        until=lambda o: o["invoice"] is not None and o["invoice"]["status"] == "VOIDED",
        timeout=30,
        what="the invoice voided",
    )
    assert voided["invoice"]["amount"] == "22.00"

    async def cancellation_emails() -> list[Any]:
        sent = (await client.http.get(f"{client.mocks}/mock/emails")).json()
        return [
            e
            for e in sent
            if e["request"].get("subject", "").startswith("Order cancelled")
            and order_id in str(e["request"])
        ]

    [email] = await eventually(cancellation_emails, what="the cancellation e-mail")
    assert "22.00" in email["request"]["body"]


async def test_an_order_in_production_is_rejected(client: Client) -> None:
    order_id = await client.paid("33.06")
    await client.in_production(order_id)
    started = (await client.cancel(order_id)).json()
    final = await client.settled(started["cancellation_id"])
    assert final["state"] == "REJECTED"
    assert final["rejection_reason"] == "already_in_production"
    order = await client.get(f"/orders/{order_id}")
    assert (order["status"], order["payment"]["status"]) == ("PAID", "SUCCESSFUL")
    assert await client.refunds_with(started["cancellation_id"]) == []


async def test_a_refund_that_fails_twice_still_ends_cancelled(client: Client) -> None:
    order_id = await client.paid("44.05")
    started = (await client.cancel(order_id)).json()
    final = await client.settled(started["cancellation_id"])
    assert final["state"] == "CANCELLED"
    [refund] = await client.refunds_with(started["cancellation_id"])
    assert refund["attempts"] == 3  # 503, 503, then the refund


async def test_a_cancellation_waits_for_a_payment_in_flight(client: Client) -> None:
    order_id = await client.order("55.03")
    await client.checkout(order_id)
    started = (await client.cancel(order_id)).json()
    assert started["state"] == "WAITING_FOR_CHECKOUT"
    final = await client.settled(started["cancellation_id"])
    assert final["state"] == "CANCELLED"
    assert final["refund"]["status"] == "SUCCEEDED"
    order = await client.get(f"/orders/{order_id}")
    assert (order["status"], order["payment"]["status"]) == ("CANCELLED", "REFUNDED")
    assert len(await client.refunds_with(started["cancellation_id"])) == 1


async def test_ten_concurrent_cancels_make_one_cancellation_and_one_refund(
    client: Client,
) -> None:
    order_id = await client.paid("66.00")
    responses = await asyncio.gather(*(client.cancel(order_id) for _ in range(10)))
    accepted = {r.json()["cancellation_id"] for r in responses if r.status_code == 202}
    assert len(accepted) == 1
    assert {r.status_code for r in responses} <= {202, 409}
    final = await client.settled(accepted.pop())
    assert final["state"] == "CANCELLED"
    assert len(await client.refunds_with(final["cancellation_id"])) == 1
