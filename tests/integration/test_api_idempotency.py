"""Idempotency-Key on `POST /orders/{id}/checkout`: the first response, for good."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from checkout_api.testing import api_client
from infra.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
async def client(settings: Settings, clean_db: AsyncEngine) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(settings) as c:
        yield c


async def new_order(client: httpx.AsyncClient) -> str:
    response = await client.post(
        "/orders",
        json={
            "order_name": "Mug",
            "amount": 7,
            "customer": {"email": "x.y+tag@sub.example.org", "name": "X"},
        },
    )
    assert response.status_code == 201, response.text
    return str(response.json()["order_id"])


async def checkout(client: httpx.AsyncClient, order_id: str, key: str) -> httpx.Response:
    return await client.post(f"/orders/{order_id}/checkout", headers={"Idempotency-Key": key})


async def execute(engine: AsyncEngine, sql: str, **params: Any) -> list[Any]:
    async with engine.begin() as conn:
        result = await conn.execute(text(sql), params)
        return list(result) if result.returns_rows else []


async def test_the_same_key_returns_the_first_response_even_after_payment(
    client: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    order_id = await new_order(client)
    first = await checkout(client, order_id, "key-1")
    assert first.status_code == 202
    assert first.json()["steps"][0]["detail"].startswith("Idempotency-Key: key-1")

    await execute(clean_db, "UPDATE checkouts SET state = 'PAID'")
    await execute(clean_db, "UPDATE orders SET status = 'PAID'")
    again = await checkout(client, order_id, "key-1")

    assert again.status_code == 202
    assert again.content == first.content
    assert again.headers["location"] == first.headers["location"]
    # Without the key, the paid order is refused.
    assert (await client.post(f"/orders/{order_id}/checkout")).status_code == 409
    [[stored]] = await execute(clean_db, "SELECT count(*) FROM idempotency_keys")
    assert stored == 1


async def test_a_new_key_on_an_active_checkout_returns_it_and_is_remembered(
    client: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    order_id = await new_order(client)
    first = await checkout(client, order_id, "a")
    second = await checkout(client, order_id, "b")
    assert second.json()["checkout_id"] == first.json()["checkout_id"]
    [[keys]] = await execute(clean_db, "SELECT count(*) FROM idempotency_keys")
    assert keys == 2


async def test_the_same_key_with_another_order_is_422_naming_the_header(
    client: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    first_order, other_order = await new_order(client), await new_order(client)
    assert (await checkout(client, first_order, "shared")).status_code == 202

    response = await checkout(client, other_order, "shared")

    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["type"] == "urn:checkout:problem:idempotency-key-reused"
    # Its own title, not the generic one of a malformed request.
    assert body["title"] == "Idempotency key reused for another order"
    assert [e["field"] for e in body["errors"]] == ["Idempotency-Key"]
    assert "Idempotency-Key" in body["detail"]
    [[checkouts]] = await execute(clean_db, "SELECT count(*) FROM checkouts")
    assert checkouts == 1


@pytest.mark.parametrize("key", ["", "k" * 256])
async def test_keys_must_have_1_to_255_characters(
    client: httpx.AsyncClient, clean_db: AsyncEngine, key: str
) -> None:
    order_id = await new_order(client)
    response = await checkout(client, order_id, key)
    assert response.status_code == 422
    assert [e["field"] for e in response.json()["errors"]] == ["Idempotency-Key"]
    [[checkouts]] = await execute(clean_db, "SELECT count(*) FROM checkouts")
    assert checkouts == 0


async def test_a_key_of_255_characters_is_accepted(client: httpx.AsyncClient) -> None:
    order_id = await new_order(client)
    assert (await checkout(client, order_id, "k" * 255)).status_code == 202


async def test_concurrent_requests_with_one_new_key_get_one_response(
    client: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    order_id = await new_order(client)
    responses = await asyncio.gather(*(checkout(client, order_id, "race") for _ in range(10)))
    assert {r.status_code for r in responses} == {202}
    assert len({r.content for r in responses}) == 1
    [[checkouts]] = await execute(clean_db, "SELECT count(*) FROM checkouts")
    [[outbox]] = await execute(clean_db, "SELECT count(*) FROM outbox")
    assert (checkouts, outbox) == (1, 1)


async def test_concurrent_use_of_one_key_for_two_orders_lets_one_win(
    client: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    orders = [await new_order(client) for _ in range(2)]
    responses = await asyncio.gather(*(checkout(client, o, "contested") for o in orders))
    assert sorted(r.status_code for r in responses) == [202, 422]
    [[checkouts]] = await execute(clean_db, "SELECT count(*) FROM checkouts")
    [[outbox]] = await execute(clean_db, "SELECT count(*) FROM outbox")
    assert (checkouts, outbox) == (1, 1)


async def test_a_stored_key_answers_without_waiting_for_the_orders_lock(
    client: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    order_id = await new_order(client)
    first = await checkout(client, order_id, "replayed")
    async with clean_db.connect() as holder:
        # Another transaction holds the order's row lock, as a checkout or a cancellation
        # of it in progress would.
        await holder.execute(
            text("SELECT 1 FROM orders WHERE order_id = :id FOR UPDATE"), {"id": order_id}
        )
        again = await asyncio.wait_for(checkout(client, order_id, "replayed"), timeout=10)
        await holder.rollback()
    assert again.status_code == 202
    assert again.content == first.content


async def test_concurrent_new_keys_on_an_active_checkout_each_store_it(
    client: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    order_id = await new_order(client)
    first = await checkout(client, order_id, "first")
    keys = [f"later-{n}" for n in range(5)]
    responses = await asyncio.gather(*(checkout(client, order_id, k) for k in [*keys, *keys]))
    assert {r.status_code for r in responses} == {202}
    assert {r.json()["checkout_id"] for r in responses} == {first.json()["checkout_id"]}
    stored = await execute(clean_db, "SELECT key, checkout_id::text FROM idempotency_keys")
    assert sorted(stored) == sorted(
        [("first", first.json()["checkout_id"])] + [(k, first.json()["checkout_id"]) for k in keys]
    )
