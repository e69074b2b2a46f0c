"""The simulated Payment Service: amounts ending .01, .02 and .03 choose the behaviour."""

from __future__ import annotations

import asyncio
import time
from typing import Any
from uuid import uuid4

import httpx
import pytest

from tests.support.polling import eventually

SLOW = 0.3


@pytest.fixture
def slow_response_seconds() -> float:
    return SLOW


def _payment(amount: Any) -> dict[str, Any]:
    return {"order_id": str(uuid4()), "amount": amount, "currency": "USD"}


def _key() -> dict[str, str]:
    return {"Idempotency-Key": str(uuid4())}


async def _entries(mocks: httpx.AsyncClient) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = (await mocks.get("/mock/payments")).json()
    return entries


@pytest.mark.parametrize("amount", ["19.99", 19.99, 20, "20.00", "0.10", 1e2])
async def test_an_ordinary_amount_as_string_or_number_succeeds(
    mocks: httpx.AsyncClient, amount: Any
) -> None:
    response = await mocks.post("/payments", json=_payment(amount), headers=_key())

    assert response.status_code == 201
    assert response.json()["status"] == "SUCCESSFUL"


@pytest.mark.parametrize("amount", ["19.01", 19.01, "0.01"])
async def test_an_amount_ending_01_is_declined_and_the_decline_is_replayed(
    mocks: httpx.AsyncClient, amount: Any
) -> None:
    key = _key()

    declined = await mocks.post("/payments", json=_payment(amount), headers=key)
    again = await mocks.post("/payments", json=_payment(amount), headers=key)

    assert declined.status_code == 201
    assert declined.json() == {
        "payment_id": declined.json()["payment_id"],
        "status": "FAILED",
        "reason": "card_declined",
    }
    assert (again.status_code, again.json()) == (201, declined.json())
    [entry] = await _entries(mocks)
    assert entry["attempts"] == 2


async def test_an_amount_ending_02_fails_twice_per_key_then_succeeds(
    mocks: httpx.AsyncClient,
) -> None:
    key, body = _key(), _payment("19.02")

    statuses = [(await mocks.post("/payments", json=body, headers=key)).status_code for _ in "ab"]
    success = await mocks.post("/payments", json=body, headers=key)
    repeat = await mocks.post("/payments", json=body, headers=key)

    assert statuses == [503, 503]
    assert success.status_code == 201
    assert success.json()["status"] == "SUCCESSFUL"
    assert (repeat.status_code, repeat.json()) == (201, success.json())
    [entry] = await _entries(mocks)
    assert (entry["attempts"], entry["response"]) == (4, success.json())


async def test_an_amount_ending_02_counts_each_key_separately(mocks: httpx.AsyncClient) -> None:
    body = _payment("5.02")
    for _ in "ab":
        await mocks.post("/payments", json=body, headers={"Idempotency-Key": "first"})

    other = await mocks.post("/payments", json=body, headers={"Idempotency-Key": "second"})

    assert other.status_code == 503


async def test_an_amount_ending_03_answers_late_once_and_a_retry_meanwhile_gets_the_same_payment(
    mocks: httpx.AsyncClient,
) -> None:
    key, body = _key(), _payment("19.03")
    started = time.monotonic()
    slow = asyncio.create_task(mocks.post("/payments", json=body, headers=key))
    # The payment is recorded when the slow request arrives, before it sleeps.
    [entry] = await eventually(lambda: _entries(mocks), what="the slow payment recorded")

    retry = await mocks.post("/payments", json=body, headers=key)

    assert not slow.done(), "the retry should not wait for the slow first request"
    first = await slow
    assert time.monotonic() - started >= SLOW
    assert first.status_code == retry.status_code == 201
    assert first.json() == retry.json() == entry["response"]
    assert first.json()["status"] == "SUCCESSFUL"
    [entry] = await _entries(mocks)
    assert entry["attempts"] == 2


async def test_an_amount_ending_03_is_quick_once_its_key_has_a_result(
    mocks: httpx.AsyncClient,
) -> None:
    key, body = _key(), _payment("19.03")
    first = await mocks.post("/payments", json=body, headers=key)

    started = time.monotonic()
    again = await mocks.post("/payments", json=body, headers=key)

    assert time.monotonic() - started < SLOW
    assert again.json() == first.json()


async def test_an_amount_ending_03_without_a_key_is_slow_every_time(
    mocks: httpx.AsyncClient,
) -> None:
    started = time.monotonic()

    response = await mocks.post("/payments", json=_payment("7.03"))

    assert time.monotonic() - started >= SLOW
    assert response.status_code == 201


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"amount": "0"}, "amount"),
        ({"amount": "-5.00"}, "amount"),
        ({"amount": "1.001"}, "amount"),
        ({"amount": "abc"}, "amount"),
        ({"amount": True}, "amount"),
        ({"amount": "NaN"}, "amount"),
        ({"currency": "usd"}, "currency"),
        ({"currency": "EURO"}, "currency"),
        ({"order_id": ""}, "order_id"),
        ({"order_id": 12}, "order_id"),
    ],
)
async def test_an_invalid_payment_is_422_naming_the_field(
    mocks: httpx.AsyncClient, change: dict[str, Any], field: str
) -> None:
    response = await mocks.post("/payments", json={**_payment("19.99"), **change})

    assert response.status_code == 422
    assert [e["field"] for e in response.json()["errors"]] == [field]
