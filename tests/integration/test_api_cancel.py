"""Cancelling orders over HTTP against the real database (CONTRACT.md section 7).

The API applies the cancellation saga's first transition in the request's
transaction; here nothing runs behind it (no relay, no saga), so the outbox shows
exactly what the request committed.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from checkout_api.testing import api_client
from infra.settings import Settings

pytestmark = pytest.mark.integration

PROBLEM_JSON = "application/problem+json"
WRITTEN = ("cancellations", "cancellation_steps", "cancellation_keys", "refunds", "outbox")


@pytest.fixture
async def client(settings: Settings, clean_db: AsyncEngine) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(settings) as c:
        yield c


async def rows(engine: AsyncEngine, sql: str, **params: Any) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        return [dict(r._mapping) for r in await conn.execute(text(sql), params)]


async def execute(engine: AsyncEngine, sql: str, **params: Any) -> None:
    """Run `;`-separated statements in one transaction (each takes the params it names)."""
    async with engine.begin() as conn:
        for statement in sql.split(";"):
            named = {k: v for k, v in params.items() if f":{k}" in statement}
            await conn.execute(text(statement), named)


async def counts(engine: AsyncEngine) -> dict[str, int]:
    return {t: len(await rows(engine, f"SELECT 1 FROM {t}")) for t in WRITTEN}


async def new_order(client: httpx.AsyncClient, amount: str = "19.99") -> str:
    response = await client.post(
        "/orders",
        json={
            "order_name": "Poster",
            "amount": amount,
            "customer": {"email": "jane@example.com", "name": "Jane"},
        },
    )
    assert response.status_code == 201, response.text
    return str(response.json()["order_id"])


async def cancel(
    client: httpx.AsyncClient,
    order_id: str,
    reason: Any = "changed my mind",
    key: str | None = None,
) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key is not None else {}
    return await client.post(f"/orders/{order_id}/cancel", json={"reason": reason}, headers=headers)


async def start_checkout(client: httpx.AsyncClient, order_id: str) -> str:
    response = await client.post(f"/orders/{order_id}/checkout")
    assert response.status_code == 202, response.text
    return str(response.json()["checkout_id"])


async def paid_order(
    client: httpx.AsyncClient, engine: AsyncEngine, *, paid_at: datetime | None = None
) -> tuple[str, str, str]:
    """An order whose checkout ended PAID, as the saga leaves it: (order, checkout, payment)."""
    order_id = await new_order(client)
    checkout_id = await start_checkout(client, order_id)
    at = paid_at or datetime.now(UTC)
    await execute(
        engine,
        "UPDATE checkouts SET state = 'PAID' WHERE checkout_id = :c;"
        " UPDATE orders SET status = 'PAID' WHERE order_id = :o;"
        " UPDATE payments SET status = 'SUCCESSFUL', provider_payment_id = 'pay-1',"
        " updated_at = :at WHERE checkout_id = :c",
        c=checkout_id,
        o=order_id,
        at=at,
    )
    (payment,) = await rows(
        engine, "SELECT payment_id FROM payments WHERE checkout_id = :c", c=checkout_id
    )
    payment_id = str(payment["payment_id"])
    return order_id, checkout_id, payment_id


async def outbox_types(engine: AsyncEngine) -> list[str]:
    found = await rows(engine, "SELECT message_type FROM outbox ORDER BY id")
    return [r["message_type"] for r in found]


async def test_a_pending_order_is_cancelled_at_once_without_refund(
    client: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    order_id = await new_order(client)
    response = await cancel(client, order_id, "  wrong size  ")
    assert response.status_code == 202, response.text
    body = response.json()
    assert response.headers["location"] == f"/cancellations/{body['cancellation_id']}"
    assert body["state"] == "CANCELLED"
    assert body["reason"] == "wrong size"
    assert body["refund"] is None
    assert body["rejection_reason"] is None
    assert [s["name"] for s in body["steps"]] == ["cancellation.requested", "order.cancelled"]
    order = (await client.get(f"/orders/{order_id}")).json()
    assert order["status"] == "CANCELLED"
    assert await outbox_types(clean_db) == ["OrderCancelled"]
    event = json.loads((await rows(clean_db, "SELECT body FROM outbox"))[0]["body"])
    assert event["refund"] is None
    assert event["cancellation_id"] == body["cancellation_id"]
    assert (await client.get(response.headers["location"])).json() == body


async def test_a_failed_order_is_cancelled_at_once(
    client: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    order_id = await new_order(client)
    checkout_id = await start_checkout(client, order_id)
    await execute(
        clean_db,
        "UPDATE checkouts SET state = 'FAILED' WHERE checkout_id = :c;"
        " UPDATE orders SET status = 'FAILED' WHERE order_id = :o",
        c=checkout_id,
        o=order_id,
    )
    response = await cancel(client, order_id)
    assert response.json()["state"] == "CANCELLED"


async def test_a_paid_order_cancels_its_production_first(
    client: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    order_id, checkout_id, _ = await paid_order(client, clean_db)
    before = await outbox_types(clean_db)
    response = await cancel(client, order_id)
    body = response.json()
    assert body["state"] == "CANCELLING_PRODUCTION"
    assert (await outbox_types(clean_db))[len(before) :] == ["CancelProductionOrder"]
    (saved,) = await rows(
        clean_db, "SELECT checkout_id, state FROM cancellations WHERE order_id = :o", o=order_id
    )
    assert str(saved["checkout_id"]) == checkout_id
    order = (await client.get(f"/orders/{order_id}")).json()
    assert order["status"] == "PAID"  # until the refund: nothing changes before the pivot


async def test_an_active_checkout_makes_the_cancellation_wait_and_refuses_new_checkouts(
    client: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    order_id = await new_order(client)
    checkout_id = await start_checkout(client, order_id)
    before = await outbox_types(clean_db)
    body = (await cancel(client, order_id)).json()
    assert body["state"] == "WAITING_FOR_CHECKOUT"
    assert await outbox_types(clean_db) == before
    (saved,) = await rows(clean_db, "SELECT checkout_id FROM cancellations")
    assert str(saved["checkout_id"]) == checkout_id
    refused = await client.post(f"/orders/{order_id}/checkout")
    assert refused.status_code == 409
    assert refused.json()["type"] == "urn:checkout:problem:order-cancelled"
    # While it is active, a new call returns that same cancellation.
    again = await cancel(client, order_id, "another reason")
    assert again.status_code == 202
    assert again.json()["cancellation_id"] == body["cancellation_id"]


async def test_a_cancelled_order_cannot_be_cancelled_or_checked_out(
    client: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    order_id = await new_order(client)
    await cancel(client, order_id)
    before = await counts(clean_db)
    again = await cancel(client, order_id)
    assert again.status_code == 409
    assert again.headers["content-type"] == PROBLEM_JSON
    assert again.json()["type"] == "urn:checkout:problem:order-already-cancelled"
    checkout = await client.post(f"/orders/{order_id}/checkout")
    assert checkout.status_code == 409
    assert checkout.json()["type"] == "urn:checkout:problem:order-cancelled"
    assert await counts(clean_db) == before


async def test_an_order_paid_before_the_refund_window_is_refused(
    client: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    order_id, _, _ = await paid_order(
        client, clean_db, paid_at=datetime.now(UTC) - timedelta(days=31)
    )
    before = await counts(clean_db)
    response = await cancel(client, order_id)
    assert response.status_code == 409
    assert response.json()["type"] == "urn:checkout:problem:refund-window-expired"
    assert "30 days" in response.json()["detail"]
    assert await counts(clean_db) == before


async def test_an_unknown_order_is_404_and_nothing_is_written(
    client: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    response = await cancel(client, str(uuid.uuid4()))
    assert response.status_code == 404
    assert response.json()["type"] == "urn:checkout:problem:order-not-found"
    assert await counts(clean_db) == dict.fromkeys(WRITTEN, 0)
    missing = await client.get(f"/cancellations/{uuid.uuid4()}")
    assert missing.status_code == 404
    assert missing.json()["type"] == "urn:checkout:problem:cancellation-not-found"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"reason": ""}, "reason"),
        ({"reason": "   "}, "reason"),
        ({"reason": "x" * 501}, "reason"),
        ({"reason": 42}, "reason"),
        ({}, "reason"),
        ({"reason": "ok", "refund": False}, "refund"),
    ],
)
async def test_bad_input_names_the_field_and_writes_nothing(
    client: httpx.AsyncClient, clean_db: AsyncEngine, body: dict[str, Any], field: str
) -> None:
    order_id = await new_order(client)
    response = await client.post(f"/orders/{order_id}/cancel", json=body)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    assert field in [e["field"] for e in response.json()["errors"]]
    assert await counts(clean_db) == dict.fromkeys(WRITTEN, 0)
    assert (await client.get(f"/orders/{order_id}")).json()["status"] == "PENDING"


async def test_a_reason_of_500_characters_is_accepted(client: httpx.AsyncClient) -> None:
    order_id = await new_order(client)
    assert (await cancel(client, order_id, "x" * 500)).status_code == 202


async def test_an_idempotency_key_returns_the_first_response_and_belongs_to_one_order(
    client: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    order_id = await new_order(client)
    first = await cancel(client, order_id, key="cancel-1")
    repeat = await cancel(client, order_id, key="cancel-1")
    assert repeat.status_code == 202
    assert repeat.json() == first.json()
    other = await new_order(client)
    reused = await cancel(client, other, key="cancel-1")
    assert reused.status_code == 422
    assert reused.json()["errors"][0]["field"] == "Idempotency-Key"
    assert (await client.get(f"/orders/{other}")).json()["status"] == "PENDING"


async def test_ten_concurrent_cancels_make_one_cancellation(
    client: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    order_id, _, _ = await paid_order(client, clean_db)
    responses = await asyncio.gather(*(cancel(client, order_id) for _ in range(10)))
    assert {r.status_code for r in responses} == {202}
    assert len({r.json()["cancellation_id"] for r in responses}) == 1
    assert len(await rows(clean_db, "SELECT 1 FROM cancellations")) == 1
    assert (await outbox_types(clean_db)).count("CancelProductionOrder") == 1


async def test_the_database_refuses_a_second_active_cancellation(
    client: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    order_id, _, _ = await paid_order(client, clean_db)
    await cancel(client, order_id)
    with pytest.raises(Exception, match="cancellations_one_active_per_order"):
        await execute(
            clean_db,
            "INSERT INTO cancellations (cancellation_id, order_id, reason, state, created_at,"
            " updated_at) VALUES (:c, :o, 'again', 'REQUESTED', now(), now())",
            c=str(uuid.uuid4()),
            o=order_id,
        )
