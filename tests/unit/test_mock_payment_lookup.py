"""`GET /payments/{idempotency_key}` of the simulated Payment Service: a charge is found
once its answer has been sent, never while it is still in flight."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import uuid4

import httpx
import pytest

from tests.support.polling import eventually

SLOW = 0.5


@pytest.fixture
def slow_response_seconds() -> float:
    return SLOW


def _payment(amount: str) -> dict[str, Any]:
    return {"order_id": str(uuid4()), "amount": amount, "currency": "USD"}


async def test_a_charge_made_is_found_with_its_result(mocks: httpx.AsyncClient) -> None:
    key = str(uuid4())
    charged = await mocks.post("/payments", json=_payment("9.99"), headers={"Idempotency-Key": key})
    found = await mocks.get(f"/payments/{key}")
    assert found.status_code == 200
    assert found.json() == charged.json()
    assert found.json()["status"] == "SUCCESSFUL"


async def test_a_declined_charge_is_found_failed(mocks: httpx.AsyncClient) -> None:
    key = str(uuid4())
    await mocks.post("/payments", json=_payment("9.01"), headers={"Idempotency-Key": key})
    found = (await mocks.get(f"/payments/{key}")).json()
    assert (found["status"], found["reason"]) == ("FAILED", "card_declined")


async def test_no_charge_with_the_key_is_404(mocks: httpx.AsyncClient) -> None:
    response = await mocks.get(f"/payments/{uuid4()}")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"


async def test_a_charge_that_only_failed_transiently_is_404(mocks: httpx.AsyncClient) -> None:
    key = str(uuid4())
    first = await mocks.post("/payments", json=_payment("9.02"), headers={"Idempotency-Key": key})
    assert first.status_code == 503
    assert (await mocks.get(f"/payments/{key}")).status_code == 404


async def test_a_slow_charge_in_flight_is_not_found_until_it_answers(
    mocks: httpx.AsyncClient,
) -> None:
    key = str(uuid4())
    slow = asyncio.create_task(
        mocks.post("/payments", json=_payment("9.03"), headers={"Idempotency-Key": key})
    )
    await eventually(
        lambda: mocks.get("/mock/payments"),
        until=lambda r: any(e["idempotency_key"] == key for e in r.json()),
        what="the slow charge received",
    )
    assert (await mocks.get(f"/payments/{key}")).status_code == 404  # still asleep
    charged = await slow
    found = await mocks.get(f"/payments/{key}")
    assert found.status_code == 200
    assert found.json() == charged.json()


async def test_the_outage_switch_answers_503_to_a_lookup(mocks: httpx.AsyncClient) -> None:
    await mocks.post("/mock/payments/outage", json={"down": True})
    assert (await mocks.get(f"/payments/{uuid4()}")).status_code == 503
    await mocks.post("/mock/payments/outage", json={"down": False})
    assert (await mocks.get(f"/payments/{uuid4()}")).status_code == 404
