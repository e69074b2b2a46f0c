"""The simulated Production Service: orders and their cancellation (CONTRACT.md section 9)."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import uuid4

import httpx
import pytest

CONTRACT_FIELDS = {"idempotency_key", "attempts", "request", "response"}


def _key() -> dict[str, str]:
    return {"Idempotency-Key": str(uuid4())}


def _order(amount: str = "19.99") -> dict[str, Any]:
    return {"order_id": str(uuid4()), "order_name": "Poster", "amount": amount, "currency": "EUR"}


async def _submit(mocks: httpx.AsyncClient, order: dict[str, Any]) -> httpx.Response:
    return await mocks.post("/production/orders", json=order, headers=_key())


async def _cancel(
    mocks: httpx.AsyncClient, order_id: str, key: dict[str, str] | None = None, **body: Any
) -> httpx.Response:
    return await mocks.post(
        f"/production/orders/{order_id}/cancel", json=body, headers=key or _key()
    )


async def _cancellations(mocks: httpx.AsyncClient) -> list[dict[str, Any]]:
    response = await mocks.get("/mock/production/cancellations", params={"include": "status_code"})
    entries: list[dict[str, Any]] = response.json()
    return entries


async def test_a_submitted_order_is_cancelled(mocks: httpx.AsyncClient) -> None:
    order, key = _order(), _key()
    await _submit(mocks, order)

    response = await _cancel(mocks, order["order_id"], key, cancellation_id="c-1")

    assert response.status_code == 200
    assert response.json() == {"status": "CANCELLED"}
    assert (await mocks.get("/mock/production/cancellations")).json() == [
        {
            "idempotency_key": key["Idempotency-Key"],
            "attempts": 1,
            "request": {"order_id": order["order_id"], "cancellation_id": "c-1"},
            "response": {"status": "CANCELLED"},
        }
    ]


@pytest.mark.parametrize("amount", ["19.06", "0.06", "1234.06"])
async def test_an_order_in_production_cannot_be_cancelled_and_the_409_is_replayed(
    mocks: httpx.AsyncClient, amount: str
) -> None:
    order, key = _order(amount), _key()
    await _submit(mocks, order)

    refused = await _cancel(mocks, order["order_id"], key)
    again = await _cancel(mocks, order["order_id"], key)

    assert refused.status_code == 409
    assert refused.json()["reason"] == "already_in_production"
    assert refused.headers["content-type"] == "application/problem+json"
    assert (again.status_code, again.json()) == (409, refused.json())
    [entry] = await _cancellations(mocks)
    assert (entry["attempts"], entry["status_code"]) == (2, 409)


async def test_an_order_never_submitted_is_cancelled_and_its_later_submission_refused(
    mocks: httpx.AsyncClient,
) -> None:
    order = _order("19.06")  # the amount is not known yet: no 409

    cancelled = await _cancel(mocks, order["order_id"])
    submitted = await _submit(mocks, order)

    assert (cancelled.status_code, cancelled.json()) == (200, {"status": "CANCELLED"})
    assert submitted.status_code == 409
    assert submitted.json()["reason"] == "cancelled"
    [entry] = (await mocks.get("/mock/production/orders", params={"include": "status_code"})).json()
    assert entry["status_code"] == 409


async def test_a_submission_made_before_the_cancellation_keeps_its_answer(
    mocks: httpx.AsyncClient,
) -> None:
    order, key = _order(), _key()
    first = await mocks.post("/production/orders", json=order, headers=key)
    await _cancel(mocks, order["order_id"])

    redelivered = await mocks.post("/production/orders", json=order, headers=key)
    fresh = await _submit(mocks, order)

    assert (redelivered.status_code, redelivered.json()) == (201, first.json())
    assert fresh.status_code == 409  # a new submission of a cancelled order is refused
    assert fresh.json()["reason"] == "cancelled"


async def test_a_refused_cancellation_does_not_block_the_order(mocks: httpx.AsyncClient) -> None:
    order = _order("5.06")
    await _submit(mocks, order)
    await _cancel(mocks, order["order_id"])

    assert (await _submit(mocks, order)).status_code == 201


async def test_cancellations_are_idempotent_per_key(mocks: httpx.AsyncClient) -> None:
    order, key = _order(), _key()

    responses = await asyncio.gather(*(_cancel(mocks, order["order_id"], key) for _ in range(5)))

    assert {r.status_code for r in responses} == {200}
    [entry] = await _cancellations(mocks)
    assert entry["attempts"] == 5


async def test_the_path_names_the_order_whatever_the_body_says(
    mocks: httpx.AsyncClient,
) -> None:
    order_id = str(uuid4())

    await mocks.post(
        f"/production/orders/{order_id}/cancel", json={"order_id": "someone-else"}, headers=_key()
    )

    [entry] = await _cancellations(mocks)
    assert entry["request"] == {"order_id": order_id}


async def test_a_cancellation_without_a_body_is_accepted(mocks: httpx.AsyncClient) -> None:
    order_id = str(uuid4())

    response = await mocks.post(f"/production/orders/{order_id}/cancel", headers=_key())

    assert response.status_code == 200
    [entry] = await _cancellations(mocks)
    assert entry["request"] == {"order_id": order_id}


@pytest.mark.parametrize("content", [b"not json", b"[1]"])
async def test_a_cancellation_body_that_is_not_an_object_is_422(
    mocks: httpx.AsyncClient, content: bytes
) -> None:
    response = await mocks.post(
        f"/production/orders/{uuid4()}/cancel",
        content=content,
        headers={"Content-Type": "application/json"},
    )

    assert response.status_code == 422


async def test_the_production_outage_covers_cancellations(mocks: httpx.AsyncClient) -> None:
    order, key = _order(), _key()
    await mocks.post("/mock/production/outage", json={"down": True})

    down = await _cancel(mocks, order["order_id"], key)
    charged = await mocks.post(
        "/payments", json={"order_id": "o", "amount": "1.00", "currency": "USD"}
    )
    await mocks.post("/mock/production/outage", json={"down": False})
    up = await _cancel(mocks, order["order_id"], key)

    assert down.status_code == 503
    assert charged.status_code == 201
    assert up.status_code == 200
    [entry] = await _cancellations(mocks)
    assert (entry["attempts"], entry["response"]) == (2, up.json())


async def test_a_cancellation_during_an_outage_is_not_remembered(
    mocks: httpx.AsyncClient,
) -> None:
    order = _order()
    await mocks.post("/mock/production/outage", json={"down": True})
    await _cancel(mocks, order["order_id"])
    await mocks.post("/mock/production/outage", json={"down": False})

    assert (await _submit(mocks, order)).status_code == 201


async def test_reset_forgets_cancellations(mocks: httpx.AsyncClient) -> None:
    order = _order()
    await _cancel(mocks, order["order_id"])

    await mocks.post("/mock/reset")

    assert (await mocks.get("/mock/production/cancellations")).json() == []
    assert (await _submit(mocks, order)).status_code == 201


async def test_inspection_entries_have_the_contracts_fields(mocks: httpx.AsyncClient) -> None:
    await _cancel(mocks, str(uuid4()))

    [entry] = (await mocks.get("/mock/production/cancellations")).json()

    assert set(entry) == CONTRACT_FIELDS


async def test_openapi_lists_the_new_services(mocks: httpx.AsyncClient) -> None:
    paths = (await mocks.get("/openapi.json")).json()["paths"]

    assert {"/refunds", "/production/orders/{order_id}/cancel"} <= set(paths)
    assert {"/mock/refunds", "/mock/production/cancellations"} <= set(paths)
