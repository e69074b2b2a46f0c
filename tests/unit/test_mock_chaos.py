"""Random failures and latency from the settings; control routes are never failed or delayed."""

from __future__ import annotations

import asyncio
import time
from random import Random
from typing import Any
from uuid import uuid4

import httpx
import pytest

from infra.settings import load_settings
from mock_services.app import create_app
from tests.support.servers import in_process

SERVICES = [
    ("/payments", {"order_id": "o-1", "amount": "19.99", "currency": "USD"}, 201),
    ("/emails", {"to": "jane@example.com", "subject": "s", "body": "b"}, 202),
    ("/production/orders", {"order_id": "o-1", "order_name": "Poster"}, 201),
]
CONTROL_GETS = [
    "/mock/payments",
    "/mock/emails",
    "/mock/production/orders",
    "/health/live",
    "/health/ready",
]


class ScriptedRandom(Random):
    """Returns the given draws in order, so a test decides which requests fail."""

    def __init__(self, *draws: float) -> None:
        super().__init__(0)
        self._draws = list(draws)

    def random(self) -> float:
        return self._draws.pop(0)


def _client(random: Random | None = None, **settings: Any) -> httpx.AsyncClient:
    app = create_app(
        load_settings(**{"mock_failure_rate": 0.0, "mock_latency_ms": 0, **settings}),
        random=random,
    )
    return in_process(app)


@pytest.mark.parametrize(("path", "body", "status"), SERVICES)
async def test_failure_rate_one_fails_every_request_and_records_it(
    path: str, body: dict[str, Any], status: int
) -> None:
    key = {"Idempotency-Key": str(uuid4())}
    async with _client(mock_failure_rate=1.0) as mocks:
        responses = [await mocks.post(path, json=body, headers=key) for _ in range(3)]
        entries = (await mocks.get(f"/mock{path}")).json()

    assert [r.status_code for r in responses] == [503, 503, 503]
    assert responses[0].json()["detail"] == "simulated random failure"
    assert [(e["attempts"], e["response"]) for e in entries] == [(3, None)]


async def test_failure_rate_one_spares_the_control_routes() -> None:
    async with _client(mock_failure_rate=1.0) as mocks:
        for path in CONTROL_GETS:
            assert (await mocks.get(path)).status_code == 200, path
        assert (await mocks.post("/mock/payments/outage", json={"down": False})).status_code == 200
        assert (await mocks.post("/mock/reset")).status_code == 200


@pytest.mark.parametrize(("path", "body", "status"), SERVICES)
async def test_failure_rate_zero_never_fails(path: str, body: dict[str, Any], status: int) -> None:
    async with _client(mock_failure_rate=0.0) as mocks:
        statuses = {(await mocks.post(path, json=body)).status_code for _ in range(50)}

    assert statuses == {status}


@pytest.mark.parametrize(("rate", "status"), [(0.6, 503), (0.4, 201)])
async def test_a_request_fails_when_its_draw_is_below_the_rate(rate: float, status: int) -> None:
    path, body, _ = SERVICES[0]
    async with _client(ScriptedRandom(0.5), mock_failure_rate=rate) as mocks:
        response = await mocks.post(path, json=body)

    assert response.status_code == status


async def test_a_random_503_is_not_the_result_of_its_key() -> None:
    path, body, _ = SERVICES[0]
    key = {"Idempotency-Key": str(uuid4())}
    async with _client(ScriptedRandom(0.1, 0.9, 0.9), mock_failure_rate=0.5) as mocks:
        failed = await mocks.post(path, json=body, headers=key)
        succeeded = await mocks.post(path, json=body, headers=key)
        replayed = await mocks.post(path, json=body, headers=key)
        [entry] = (await mocks.get("/mock/payments")).json()

    assert (failed.status_code, succeeded.status_code) == (503, 201)
    assert replayed.json() == succeeded.json()
    assert (entry["attempts"], entry["response"]) == (3, succeeded.json())


@pytest.mark.parametrize(("path", "body", "status"), SERVICES)
async def test_latency_delays_the_services_but_not_the_control_routes(
    path: str, body: dict[str, Any], status: int
) -> None:
    latency = 0.25
    async with _client(mock_latency_ms=int(latency * 1000)) as mocks:
        started = time.monotonic()
        response = await mocks.post(path, json=body)
        service_took = time.monotonic() - started

    assert response.status_code == status
    assert service_took >= latency
    # A minute of latency: a control route that waited it would run into the timeout,
    # which leaves a loaded machine all the time it needs for the calls themselves.
    async with _client(mock_latency_ms=60_000) as mocks, asyncio.timeout(30):
        for control in CONTROL_GETS:
            assert (await mocks.get(control)).status_code == 200
        assert (await mocks.post("/mock/emails/outage", json={"down": False})).status_code < 300
