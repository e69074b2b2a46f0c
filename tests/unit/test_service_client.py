"""Calls to external services: classification, in-process retry and the circuit breaker.

The transport is httpx's MockTransport, injected where the client is built.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from infra.http import ServiceClient, build_breakers
from infra.messaging.failures import PermanentFailure, TransientFailure
from infra.settings import load_settings


class Script:
    """Answers requests from a list of responses (or exceptions), recording each request."""

    def __init__(self, *answers: int | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return httpx.Response(answer, json={"status": "ok"})


def _client(script: Script, **kw: object) -> ServiceClient:
    http = httpx.AsyncClient(transport=httpx.MockTransport(script))
    return ServiceClient("payment", http, "http://svc", max_backoff=0.01, **kw)  # type: ignore[arg-type]


async def test_success_returns_the_body_and_sends_the_key() -> None:
    script = Script(201)
    assert await _client(script).post("/payments", {"a": 1}, idempotency_key="k-1") == {
        "status": "ok"
    }
    assert script.requests[0].headers["Idempotency-Key"] == "k-1"


@pytest.mark.parametrize(
    "transient", [503, 500, 408, 429, httpx.ConnectError("refused"), httpx.ReadTimeout("slow")]
)
async def test_transient_failures_are_retried_in_process(transient: int | Exception) -> None:
    script = Script(transient, transient, 201)
    assert await _client(script, attempts=3).post("/p", {}, idempotency_key="k") == {"status": "ok"}
    assert len(script.requests) == 3
    assert {r.headers["Idempotency-Key"] for r in script.requests} == {"k"}


async def test_transient_failure_surfaces_after_the_last_attempt() -> None:
    script = Script(503)
    with pytest.raises(TransientFailure, match="503"):
        await _client(script, attempts=3).post("/p", {}, idempotency_key="k")
    assert len(script.requests) == 3


@pytest.mark.parametrize("status", [400, 401, 404, 409, 422])
async def test_other_client_errors_are_permanent_and_not_retried(status: int) -> None:
    script = Script(status)
    with pytest.raises(PermanentFailure, match=str(status)):
        await _client(script, attempts=3).post("/p", {}, idempotency_key="k")
    assert len(script.requests) == 1


async def test_the_breaker_opens_and_stops_calling_a_service_that_is_down() -> None:
    settings = load_settings(breaker_threshold=3, breaker_pause=60)
    script = Script(503)
    client = _client(script, attempts=1, breakers=build_breakers(settings))
    for _ in range(3):
        with pytest.raises(TransientFailure, match="503"):
            await client.post("/p", {}, idempotency_key="k")
    with pytest.raises(TransientFailure, match="circuit breaker is open"):
        await client.post("/p", {}, idempotency_key="k")
    assert len(script.requests) == 3  # the fourth call never left the process


async def test_permanent_failures_do_not_open_the_breaker() -> None:
    settings = load_settings(breaker_threshold=2, breaker_pause=60)
    script = Script(422, 422, 422, 201)
    client = _client(script, attempts=1, breakers=build_breakers(settings))
    for _ in range(3):
        with pytest.raises(PermanentFailure):
            await client.post("/p", {}, idempotency_key="k")
    assert await client.post("/p", {}, idempotency_key="k") == {"status": "ok"}


async def test_the_breaker_lets_a_trial_call_through_after_the_pause() -> None:
    settings = load_settings(breaker_threshold=1, breaker_pause=0.05)
    script = Script(503, 201)
    client = _client(script, attempts=1, breakers=build_breakers(settings))
    with pytest.raises(TransientFailure):
        await client.post("/p", {}, idempotency_key="k")
    await asyncio.sleep(0.1)  # the pause itself is what is under test here
    assert await client.post("/p", {}, idempotency_key="k") == {"status": "ok"}
