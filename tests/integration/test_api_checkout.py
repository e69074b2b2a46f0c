"""Checkouts over HTTP against the real database: one transaction, one active checkout."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from checkout_api.testing import api_client
from contracts import ChargePayment
from infra.settings import Settings
from tests.support.polling import eventually

pytestmark = pytest.mark.integration

PROBLEM_JSON = "application/problem+json"


@pytest.fixture
async def client(settings: Settings, clean_db: AsyncEngine) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(settings) as c:
        yield c


async def new_order(client: httpx.AsyncClient, name: str = "Poster") -> str:
    response = await client.post(
        "/orders",
        json={
            "order_name": name,
            "amount": "19.99",
            "customer": {"email": "jane@example.com", "name": "Jane"},
        },
    )
    assert response.status_code == 201, response.text
    return str(response.json()["order_id"])


async def checkout(
    client: httpx.AsyncClient, order_id: str, key: str | None = None
) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key is not None else {}
    return await client.post(f"/orders/{order_id}/checkout", headers=headers)


async def rows(engine: AsyncEngine, sql: str, **params: Any) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        return [dict(r._mapping) for r in await conn.execute(text(sql), params)]


async def count(engine: AsyncEngine, table: str) -> int:
    return len(await rows(engine, f"SELECT 1 FROM {table}"))


async def set_checkout_state(engine: AsyncEngine, checkout_id: str, state: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE checkouts SET state = :s WHERE checkout_id = :c"),
            {"s": state, "c": checkout_id},
        )


async def set_order_status(engine: AsyncEngine, order_id: str, status: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE orders SET status = :s WHERE order_id = :o"), {"s": status, "o": order_id}
        )


async def test_checkout_applies_the_first_transition_and_writes_one_charge(
    client: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    order_id = await new_order(client)
    response = await checkout(client, order_id)

    assert response.status_code == 202
    body = response.json()
    checkout_id = body["checkout_id"]
    assert response.headers["location"] == f"/checkouts/{checkout_id}"
    assert set(body) == {
        "checkout_id",
        "order_id",
        "state",
        "failure_reason",
        "steps",
        "created_at",
        "updated_at",
    }
    assert body["order_id"] == order_id
    # The saga's first transition is applied in the checkout's own statement.
    assert body["state"] == "PAYMENT_PENDING"
    assert body["failure_reason"] is None
    [step, moved] = body["steps"]
    assert (step["name"], step["status"]) == ("checkout.requested", "STARTED")
    assert (moved["name"], moved["status"], moved["detail"]) == (
        "payment.requested",
        "PAYMENT_PENDING",
        "charge sent",
    )
    # The request's trace, if this process has a tracer provider (another test may
    # have installed one), and nothing else: no Idempotency-Key was sent.
    assert step["detail"] is None or re.fullmatch("trace [0-9a-f]{32}", step["detail"])

    [payment] = await rows(clean_db, "SELECT * FROM payments")
    assert (str(payment["checkout_id"]), str(payment["order_id"])) == (checkout_id, order_id)
    assert (payment["status"], payment["amount"], payment["currency"]) == (
        "PENDING",
        Decimal("19.99"),
        "USD",
    )
    [outbox] = await rows(clean_db, "SELECT * FROM outbox")
    assert outbox["message_type"] == "ChargePayment"
    assert outbox["routing_key"] == "payment.charge"
    assert outbox["exchange"] == "internal"
    assert str(outbox["correlation_id"]) == checkout_id
    # The body the statement built from the locked order is the command's own model.
    assert ChargePayment.model_validate_json(outbox["body"]) == ChargePayment(
        checkout_id=uuid.UUID(checkout_id),
        order_id=uuid.UUID(order_id),
        payment_id=payment["payment_id"],
        amount=Decimal("19.99"),
        currency="USD",
    )
    assert json.loads(outbox["body"])["amount"] == "19.99"
    steps = await rows(clean_db, "SELECT * FROM checkout_steps ORDER BY id")
    assert [(s["name"], s["status"]) for s in steps] == [
        ("checkout.requested", "STARTED"),
        ("payment.requested", "PAYMENT_PENDING"),
    ]


async def test_get_checkout_returns_what_the_checkout_returned(
    client: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    order_id = await new_order(client)
    started = (await checkout(client, order_id)).json()
    response = await client.get(f"/checkouts/{started['checkout_id']}")
    assert response.status_code == 200
    assert response.json() == started


async def test_steps_are_listed_in_insertion_order(
    client: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    order_id = await new_order(client)
    checkout_id = (await checkout(client, order_id)).json()["checkout_id"]
    async with clean_db.begin() as conn:
        for name in ("payment.charge", "payment.succeeded", "checkout.paid"):
            await conn.execute(
                text(
                    "INSERT INTO checkout_steps (checkout_id, name, status, at, detail) "
                    "VALUES (:c, :n, 'DONE', now() - interval '1 hour', 'x')"
                ),
                {"c": checkout_id, "n": name},
            )
    steps = (await client.get(f"/checkouts/{checkout_id}")).json()["steps"]
    assert [s["name"] for s in steps] == [
        "checkout.requested",
        "payment.requested",
        "payment.charge",
        "payment.succeeded",
        "checkout.paid",
    ]


async def test_unknown_checkout_is_404_and_non_uuid_is_422(client: httpx.AsyncClient) -> None:
    response = await client.get(f"/checkouts/{uuid.uuid4()}")
    assert response.status_code == 404
    assert response.headers["content-type"] == PROBLEM_JSON
    response = await client.get("/checkouts/42")
    assert response.status_code == 422
    assert [e["field"] for e in response.json()["errors"]] == ["checkout_id"]


async def test_checkout_of_an_unknown_order_is_404_and_writes_nothing(
    client: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    response = await checkout(client, str(uuid.uuid4()), key="k-unknown")
    assert response.status_code == 404
    assert response.headers["content-type"] == PROBLEM_JSON
    for table in ("checkouts", "outbox", "idempotency_keys"):
        assert await count(clean_db, table) == 0


async def test_checkout_of_a_non_uuid_order_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post("/orders/nope/checkout")
    assert response.status_code == 422
    assert [e["field"] for e in response.json()["errors"]] == ["order_id"]


async def test_a_second_call_while_active_returns_the_same_checkout(
    client: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    order_id = await new_order(client)
    first = await checkout(client, order_id)
    second = await checkout(client, order_id)
    assert second.status_code == 202
    assert second.json() == first.json()
    assert second.headers["location"] == first.headers["location"]

    await set_checkout_state(clean_db, first.json()["checkout_id"], "PAYMENT_PENDING")
    third = await checkout(client, order_id)
    assert third.json()["checkout_id"] == first.json()["checkout_id"]
    assert third.json()["state"] == "PAYMENT_PENDING"
    assert await count(clean_db, "checkouts") == 1
    assert await count(clean_db, "outbox") == 1


async def test_a_paid_order_is_409_and_nothing_is_written(
    client: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    order_id = await new_order(client)
    await set_order_status(clean_db, order_id, "PAID")
    response = await checkout(client, order_id)
    assert response.status_code == 409
    assert response.headers["content-type"] == PROBLEM_JSON
    body = response.json()
    assert body["status"] == 409
    assert order_id in body["detail"]
    assert await count(clean_db, "checkouts") == 0
    assert await count(clean_db, "outbox") == 0


async def test_after_a_failed_checkout_a_new_one_starts_and_the_order_is_pending_again(
    client: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    order_id = await new_order(client)
    first = (await checkout(client, order_id)).json()
    await set_checkout_state(clean_db, first["checkout_id"], "FAILED")
    await set_order_status(clean_db, order_id, "FAILED")
    assert (await client.get(f"/orders/{order_id}")).json()["status"] == "FAILED"

    response = await checkout(client, order_id)
    assert response.status_code == 202
    second = response.json()
    assert second["checkout_id"] != first["checkout_id"]
    assert second["state"] == "PAYMENT_PENDING"
    order = (await client.get(f"/orders/{order_id}")).json()
    assert order["status"] == "PENDING"
    assert order["updated_at"] > order["created_at"]
    outbox = await rows(clean_db, "SELECT correlation_id FROM outbox ORDER BY id")
    assert [str(r["correlation_id"]) for r in outbox] == [
        first["checkout_id"],
        second["checkout_id"],
    ]


async def test_ten_concurrent_checkouts_of_one_order_start_one_checkout(
    client: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    order_id = await new_order(client)
    responses = await asyncio.gather(*(checkout(client, order_id) for _ in range(10)))

    assert {r.status_code for r in responses} == {202}
    assert len({r.json()["checkout_id"] for r in responses}) == 1
    assert await count(clean_db, "checkouts") == 1
    assert await count(clean_db, "outbox") == 1


async def test_a_checkout_committed_while_waiting_for_the_order_lock_is_the_answer(
    client: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    """The request reads the active checkout on the snapshot it started with, so it misses
    one committed while it waited for the lock; the unique index stops its insert, and the
    attempt run again answers with the winner's checkout."""
    order_id = await new_order(client)
    winner = str(uuid.uuid4())
    async with clean_db.connect() as holder:
        await holder.execute(
            text("SELECT 1 FROM orders WHERE order_id = :o FOR UPDATE"), {"o": order_id}
        )
        request = asyncio.create_task(checkout(client, order_id))
        await eventually(
            lambda: rows(
                clean_db,
                "SELECT 1 FROM pg_locks WHERE NOT granted AND locktype = 'transactionid'",
            ),
            what="the checkout request waiting for the order's lock",
            until=bool,
        )
        await holder.execute(
            text(
                "INSERT INTO checkouts (checkout_id, order_id, state, created_at, updated_at)"
                " VALUES (:c, :o, 'STARTED', now(), now())"
            ),
            {"c": winner, "o": order_id},
        )
        await holder.commit()
    response = await asyncio.wait_for(request, timeout=10)

    assert response.status_code == 202
    assert response.json()["checkout_id"] == winner
    assert await count(clean_db, "checkouts") == 1
    assert await count(clean_db, "outbox") == 0


async def test_concurrent_checkouts_of_many_orders_each_start_one(
    client: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    orders = [await new_order(client, f"o{i}") for i in range(5)]
    responses = await asyncio.gather(*(checkout(client, o) for o in orders for _ in range(3)))
    assert {r.status_code for r in responses} == {202}
    assert len({r.json()["checkout_id"] for r in responses}) == 5
    assert await count(clean_db, "outbox") == 5


async def test_checkouts_started_are_counted_once(
    client: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    order_id = await new_order(client)
    for _ in range(3):
        await checkout(client, order_id)
    metrics = (await client.get("/metrics")).text
    assert "checkouts_started_total 1.0" in metrics
