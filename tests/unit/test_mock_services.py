"""What all three simulated services share: idempotency, records, outage switches, reset."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any
from uuid import uuid4

import httpx
import pytest

from infra.settings import load_settings
from mock_services.app import create_app
from tests.support.servers import in_process


def _app() -> Any:
    return create_app(load_settings(mock_failure_rate=0.0, mock_latency_ms=0))


@pytest.fixture
async def mocks() -> AsyncIterator[httpx.AsyncClient]:
    async with in_process(_app()) as client:
        yield client


@dataclass(frozen=True)
class Service:
    name: str
    path: str
    inspect_path: str
    outage_path: str
    status: int
    id_field: str
    success: str
    valid: Callable[[], dict[str, Any]]
    invalid: dict[str, Any]
    missing_field: str


PAYMENTS = Service(
    name="payments",
    path="/payments",
    inspect_path="/mock/payments",
    outage_path="/mock/payments/outage",
    status=201,
    id_field="payment_id",
    success="SUCCESSFUL",
    valid=lambda: {"order_id": str(uuid4()), "amount": "19.99", "currency": "USD"},
    invalid={"order_id": "o-1", "amount": "19.99"},
    missing_field="currency",
)
EMAILS = Service(
    name="emails",
    path="/emails",
    inspect_path="/mock/emails",
    outage_path="/mock/emails/outage",
    status=202,
    id_field="email_id",
    success="SENT",
    valid=lambda: {"to": f"jane.{uuid4().hex[:6]}@example.com", "subject": "Hi", "body": "Thanks"},
    invalid={"subject": "Hi", "body": "Thanks"},
    missing_field="to",
)
PRODUCTION = Service(
    name="production",
    path="/production/orders",
    inspect_path="/mock/production/orders",
    outage_path="/mock/production/outage",
    status=201,
    id_field="production_order_id",
    success="RECEIVED",
    valid=lambda: {"order_id": str(uuid4()), "order_name": "Poster"},
    invalid={"order_id": "o-1"},
    missing_field="order_name",
)
SERVICES = [pytest.param(s, id=s.name) for s in (PAYMENTS, EMAILS, PRODUCTION)]


def _key() -> dict[str, str]:
    return {"Idempotency-Key": str(uuid4())}


CONTRACT_FIELDS = {"idempotency_key", "attempts", "request", "response"}


async def _entries(mocks: httpx.AsyncClient, service: Service) -> list[dict[str, Any]]:
    response = await mocks.get(service.inspect_path, params={"include": "status_code"})
    assert response.status_code == 200
    entries: list[dict[str, Any]] = response.json()
    return entries


@pytest.mark.parametrize("service", SERVICES)
async def test_success_is_recorded_with_its_request_and_response(
    mocks: httpx.AsyncClient, service: Service
) -> None:
    body, key = service.valid(), _key()

    response = await mocks.post(service.path, json=body, headers=key)

    assert response.status_code == service.status
    assert response.headers["content-type"] == "application/json"
    assert set(response.json()) == {service.id_field, "status"}
    assert response.json()["status"] == service.success
    assert await _entries(mocks, service) == [
        {
            "idempotency_key": key["Idempotency-Key"],
            "attempts": 1,
            "request": body,
            "response": response.json(),
            "status_code": service.status,
        }
    ]


@pytest.mark.parametrize("service", SERVICES)
async def test_an_entry_has_exactly_the_contracts_fields_unless_more_is_asked_for(
    mocks: httpx.AsyncClient, service: Service
) -> None:
    await mocks.post(service.path, json=service.valid(), headers=_key())
    await mocks.post(service.path, json=service.invalid, headers=_key())

    plain = (await mocks.get(service.inspect_path)).json()
    assert [set(entry) for entry in plain] == [CONTRACT_FIELDS, CONTRACT_FIELDS]
    with_status = await _entries(mocks, service)
    assert [entry["status_code"] for entry in with_status] == [service.status, 422]
    assert [{k: e[k] for k in CONTRACT_FIELDS} for e in with_status] == plain
    unknown = await mocks.get(service.inspect_path, params={"include": "everything"})
    assert unknown.status_code == 422


@pytest.mark.parametrize("service", SERVICES)
async def test_a_repeated_key_returns_the_first_result_and_makes_no_new_effect(
    mocks: httpx.AsyncClient, service: Service
) -> None:
    key, first_body = _key(), service.valid()
    first = await mocks.post(service.path, json=first_body, headers=key)

    again = await mocks.post(service.path, json=service.valid(), headers=key)

    assert (again.status_code, again.json()) == (first.status_code, first.json())
    [entry] = await _entries(mocks, service)
    assert entry["attempts"] == 2
    assert entry["request"] == first_body


@pytest.mark.parametrize("service", SERVICES)
async def test_concurrent_requests_with_one_key_make_one_effect(
    mocks: httpx.AsyncClient, service: Service
) -> None:
    key, body = _key(), service.valid()

    responses = await asyncio.gather(
        *(mocks.post(service.path, json=body, headers=key) for _ in range(10))
    )

    ids = {r.json()[service.id_field] for r in responses}
    assert len(ids) == 1
    [entry] = await _entries(mocks, service)
    assert entry["attempts"] == 10


@pytest.mark.parametrize("service", SERVICES)
async def test_requests_without_a_key_are_each_their_own_effect(
    mocks: httpx.AsyncClient, service: Service
) -> None:
    body = service.valid()

    first = await mocks.post(service.path, json=body)
    second = await mocks.post(service.path, json=body)

    assert first.status_code == second.status_code == service.status
    assert first.json()[service.id_field] != second.json()[service.id_field]
    entries = await _entries(mocks, service)
    assert [(e["idempotency_key"], e["attempts"]) for e in entries] == [(None, 1), (None, 1)]
    assert [e["response"] for e in entries] == [first.json(), second.json()]


@pytest.mark.parametrize("service", SERVICES)
async def test_outage_answers_503_records_the_attempt_and_clears_when_switched_off(
    mocks: httpx.AsyncClient, service: Service
) -> None:
    key, body = _key(), service.valid()

    switched = await mocks.post(service.outage_path, json={"down": True})
    down = await mocks.post(service.path, json=body, headers=key)

    assert switched.json() == {"service": service.name, "down": True}
    assert down.status_code == 503
    assert down.headers["content-type"] == "application/problem+json"
    assert down.json()["status"] == 503
    [entry] = await _entries(mocks, service)
    assert (entry["attempts"], entry["response"], entry["status_code"]) == (1, None, None)

    switched = await mocks.post(service.outage_path, json={"down": False})
    up = await mocks.post(service.path, json=body, headers=key)

    assert switched.json() == {"service": service.name, "down": False}
    assert up.status_code == service.status
    [entry] = await _entries(mocks, service)
    assert (entry["attempts"], entry["response"]) == (2, up.json())


@pytest.mark.parametrize("service", SERVICES)
async def test_outage_fails_everything_even_a_key_with_a_result(
    mocks: httpx.AsyncClient, service: Service
) -> None:
    key, body = _key(), service.valid()
    first = await mocks.post(service.path, json=body, headers=key)
    await mocks.post(service.outage_path, json={"down": True})

    during = await mocks.post(service.path, json=body, headers=key)
    await mocks.post(service.outage_path, json={"down": False})
    after = await mocks.post(service.path, json=body, headers=key)

    assert during.status_code == 503
    assert after.json() == first.json()
    [entry] = await _entries(mocks, service)
    assert (entry["attempts"], entry["response"]) == (3, first.json())


@pytest.mark.parametrize("service", SERVICES)
async def test_outage_affects_only_its_own_service(
    mocks: httpx.AsyncClient, service: Service
) -> None:
    await mocks.post(service.outage_path, json={"down": True})

    for other in (PAYMENTS, EMAILS, PRODUCTION):
        response = await mocks.post(other.path, json=other.valid())
        assert response.status_code == (503 if other is service else other.status), other.name


@pytest.mark.parametrize("service", SERVICES)
async def test_an_invalid_body_gets_a_final_422_that_the_key_replays(
    mocks: httpx.AsyncClient, service: Service
) -> None:
    key = _key()

    invalid = await mocks.post(service.path, json=service.invalid, headers=key)
    again = await mocks.post(service.path, json=service.valid(), headers=key)

    assert invalid.status_code == 422
    assert invalid.headers["content-type"] == "application/problem+json"
    problem = invalid.json()
    assert problem["status"] == 422
    assert problem["type"].endswith("/validation-error")
    assert [e["field"] for e in problem["errors"]] == [service.missing_field]
    assert (again.status_code, again.json()) == (422, problem)
    [entry] = await _entries(mocks, service)
    assert (entry["attempts"], entry["status_code"], entry["request"]) == (2, 422, service.invalid)


@pytest.mark.parametrize("service", SERVICES)
@pytest.mark.parametrize("content", [b"not json", b"[1, 2]", b""])
async def test_a_body_that_is_not_a_json_object_is_422(
    mocks: httpx.AsyncClient, service: Service, content: bytes
) -> None:
    response = await mocks.post(
        service.path, content=content, headers={"Content-Type": "application/json"}
    )

    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "body"


@pytest.mark.parametrize("service", SERVICES)
async def test_the_outage_switch_rejects_a_body_without_a_boolean(
    mocks: httpx.AsyncClient, service: Service
) -> None:
    response = await mocks.post(service.outage_path, json={"down": "yes"})

    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert [e["field"] for e in response.json()["errors"]] == ["down"]


async def test_reset_clears_every_record_and_switches_outages_off(
    mocks: httpx.AsyncClient,
) -> None:
    for service in (PAYMENTS, EMAILS, PRODUCTION):
        await mocks.post(service.path, json=service.valid(), headers=_key())
        await mocks.post(service.outage_path, json={"down": True})

    reset = await mocks.post("/mock/reset")

    assert reset.status_code == 200
    assert reset.json() == {
        "reset": ["payments", "refunds", "emails", "production", "production_cancellations"]
    }
    for service in (PAYMENTS, EMAILS, PRODUCTION):
        assert await _entries(mocks, service) == []
        response = await mocks.post(service.path, json=service.valid())
        assert response.status_code == service.status


async def test_a_key_used_before_a_reset_is_processed_afresh(mocks: httpx.AsyncClient) -> None:
    key = _key()
    before = await mocks.post(PAYMENTS.path, json=PAYMENTS.valid(), headers=key)
    await mocks.post("/mock/reset")

    after = await mocks.post(PAYMENTS.path, json=PAYMENTS.valid(), headers=key)

    assert after.json()["payment_id"] != before.json()["payment_id"]
    [entry] = await _entries(mocks, PAYMENTS)
    assert entry["attempts"] == 1


@pytest.mark.parametrize("path", ["/health/live", "/health/ready"])
async def test_health(mocks: httpx.AsyncClient, path: str) -> None:
    response = await mocks.get(path)

    assert (response.status_code, response.json()) == (200, {"status": "ok"})


async def test_two_apps_do_not_share_records_or_switches() -> None:
    async with in_process(_app()) as one, in_process(_app()) as two:
        await one.post(PAYMENTS.path, json=PAYMENTS.valid(), headers=_key())
        await one.post(EMAILS.outage_path, json={"down": True})

        assert (await two.get(PAYMENTS.inspect_path)).json() == []
        assert (await two.post(EMAILS.path, json=EMAILS.valid())).status_code == 202


async def test_production_keeps_extra_fields_of_the_order(mocks: httpx.AsyncClient) -> None:
    body = {"order_id": str(uuid4()), "order_name": "Poster", "quantity": 2, "notes": None}

    response = await mocks.post(PRODUCTION.path, json=body)

    assert response.status_code == 201
    [entry] = await _entries(mocks, PRODUCTION)
    assert entry["request"] == body


async def test_openapi_describes_the_request_bodies(mocks: httpx.AsyncClient) -> None:
    paths = (await mocks.get("/openapi.json")).json()["paths"]

    schema = paths["/payments"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert set(schema["required"]) == {"order_id", "amount", "currency"}
