"""The simulated Payment Service's refunds: `POST /refunds` (CONTRACT.md section 9)."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import uuid4

import httpx
import pytest

CONTRACT_FIELDS = {"idempotency_key", "attempts", "request", "response"}


def _refund(amount: Any = "19.99") -> dict[str, Any]:
    return {
        "payment_id": str(uuid4()),
        "amount": amount,
        "currency": "USD",
        "reason": "changed my mind",
    }


def _key() -> dict[str, str]:
    return {"Idempotency-Key": str(uuid4())}


async def _entries(mocks: httpx.AsyncClient) -> list[dict[str, Any]]:
    response = await mocks.get("/mock/refunds", params={"include": "status_code"})
    entries: list[dict[str, Any]] = response.json()
    return entries


@pytest.mark.parametrize("amount", ["19.99", 19.99, "20.00", 20])
async def test_a_refund_succeeds_and_is_recorded(mocks: httpx.AsyncClient, amount: Any) -> None:
    body, key = _refund(amount), _key()

    response = await mocks.post("/refunds", json=body, headers=key)

    assert response.status_code == 201
    assert response.headers["content-type"] == "application/json"
    assert set(response.json()) == {"refund_id", "status"}
    assert response.json()["status"] == "SUCCEEDED"
    plain = (await mocks.get("/mock/refunds")).json()
    assert plain == [
        {
            "idempotency_key": key["Idempotency-Key"],
            "attempts": 1,
            "request": body,
            "response": response.json(),
        }
    ]


async def test_an_amount_ending_05_fails_twice_per_key_then_succeeds(
    mocks: httpx.AsyncClient,
) -> None:
    key, body = _key(), _refund("19.05")

    statuses = [(await mocks.post("/refunds", json=body, headers=key)).status_code for _ in "ab"]
    third = await mocks.post("/refunds", json=body, headers=key)
    other_key = await mocks.post("/refunds", json=body, headers=_key())

    assert statuses == [503, 503]
    assert third.status_code == 201
    assert third.json()["status"] == "SUCCEEDED"
    assert other_key.status_code == 503  # the count is per key
    first, second = await _entries(mocks)
    assert (first["attempts"], first["status_code"], first["response"]) == (3, 201, third.json())
    assert (second["attempts"], second["response"]) == (1, None)


async def test_a_repeated_key_returns_the_first_refund_and_makes_no_new_one(
    mocks: httpx.AsyncClient,
) -> None:
    key, body = _key(), _refund()

    responses = await asyncio.gather(
        *(mocks.post("/refunds", json=body, headers=key) for _ in range(5))
    )

    assert len({r.json()["refund_id"] for r in responses}) == 1
    [entry] = await _entries(mocks)
    assert entry["attempts"] == 5


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"amount": "0"}, "amount"),
        ({"amount": "1.001"}, "amount"),
        ({"currency": "usd"}, "currency"),
        ({"reason": ""}, "reason"),
        ({"payment_id": None}, "payment_id"),
    ],
)
async def test_an_invalid_refund_is_a_final_422(
    mocks: httpx.AsyncClient, change: dict[str, Any], field: str
) -> None:
    key = _key()
    invalid = await mocks.post("/refunds", json=_refund() | change, headers=key)
    again = await mocks.post("/refunds", json=_refund(), headers=key)

    assert invalid.status_code == 422
    assert invalid.headers["content-type"] == "application/problem+json"
    assert [e["field"] for e in invalid.json()["errors"]] == [field]
    assert (again.status_code, again.json()) == (422, invalid.json())


async def test_the_payments_outage_covers_refunds(mocks: httpx.AsyncClient) -> None:
    key, body = _key(), _refund()
    await mocks.post("/mock/payments/outage", json={"down": True})

    down = await mocks.post("/refunds", json=body, headers=key)
    emails = await mocks.post(
        "/emails", json={"to": "jane@example.com", "subject": "s", "body": "b"}
    )
    await mocks.post("/mock/payments/outage", json={"down": False})
    up = await mocks.post("/refunds", json=body, headers=key)

    assert down.status_code == 503
    assert down.json()["status"] == 503
    assert emails.status_code == 202
    assert up.status_code == 201
    [entry] = await _entries(mocks)
    assert (entry["attempts"], entry["response"]) == (2, up.json())


async def test_refunds_have_no_outage_switch_of_their_own(mocks: httpx.AsyncClient) -> None:
    response = await mocks.post("/mock/refunds/outage", json={"down": True})

    assert response.status_code in (404, 405)


async def test_reset_forgets_refunds_and_switches_the_payments_back_on(
    mocks: httpx.AsyncClient,
) -> None:
    await mocks.post("/refunds", json=_refund(), headers=_key())
    await mocks.post("/mock/payments/outage", json={"down": True})

    await mocks.post("/mock/reset")

    assert (await mocks.get("/mock/refunds")).json() == []
    assert (await mocks.post("/refunds", json=_refund())).status_code == 201


async def test_inspection_entries_have_the_contracts_fields(mocks: httpx.AsyncClient) -> None:
    await mocks.post("/refunds", json=_refund(), headers=_key())

    [entry] = (await mocks.get("/mock/refunds")).json()

    assert set(entry) == CONTRACT_FIELDS
