"""Calls to external services: classification, in-process retry and the circuit breaker.

The service is a real HTTP server on 127.0.0.1 (aiohttp's test server) answering from
a script, so the client's own transport, timeouts and connection errors are exercised.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from infra.http import ServiceClient, ServiceRefused, build_breakers
from infra.messaging.failures import PermanentFailure, TransientFailure
from infra.settings import load_settings
from infra.tracing import tracer

# Script answers besides a status code: the server cuts the connection, or answers
# after the client's timeout, or answers 200 with a body that is not JSON.
DISCONNECT = "disconnect"
SLOW = "slow"
NOT_JSON = "not-json"
CLIENT_TIMEOUT_S = 0.2

Answer = int | str


class Script:
    """Answers requests from a list of answers (the last one repeats), recording each."""

    def __init__(self, *answers: Answer) -> None:
        self.answers = list(answers)
        self.requests: list[tuple[str, dict[str, str], bytes]] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.path, dict(request.headers), await request.read()))
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if answer == DISCONNECT:
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=500)  # never reaches the client
        if answer == SLOW:
            await asyncio.sleep(CLIENT_TIMEOUT_S * 10)  # the client's timeout is under test
            return web.json_response({"status": "late"})
        if answer == NOT_JSON:
            return web.Response(status=200, text="<html>oops</html>")
        assert isinstance(answer, int)
        return web.json_response({"status": "ok"}, status=answer)


Factory = Callable[..., Awaitable[tuple[ServiceClient, Script]]]


@pytest.fixture
async def service() -> AsyncIterator[Factory]:
    """`await service(*answers, **client_options)`: a client of a scripted server."""
    async with AsyncExitStack() as stack:
        http = await stack.enter_async_context(
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S))
        )

        async def make(*answers: Answer, **kw: object) -> tuple[ServiceClient, Script]:
            script = Script(*answers)
            app = web.Application()
            app.router.add_post("/{tail:.*}", script.handle)
            app.router.add_get("/{tail:.*}", script.handle)
            server = TestServer(app, host="127.0.0.1")
            await server.start_server()
            stack.push_async_callback(server.close)
            url = str(server.make_url(""))
            client = ServiceClient("payment", http, url, max_backoff=0.01, **kw)  # type: ignore[arg-type]
            return client, script

        yield make


async def test_success_returns_the_body_and_sends_the_key(service: Factory) -> None:
    client, script = await service(201)
    assert await client.post("/payments", {"a": 1}, idempotency_key="k-1") == {"status": "ok"}
    path, headers, body = script.requests[0]
    assert (path, headers["Idempotency-Key"], json.loads(body)) == ("/payments", "k-1", {"a": 1})
    assert headers["Content-Type"] == "application/json"


async def test_a_get_sends_no_body_and_so_no_content_type(service: Factory) -> None:
    client, script = await service(200)
    assert await client.get_or_none("/payments/p-1") == {"status": "ok"}
    path, headers, body = script.requests[0]
    assert (path, body) == ("/payments/p-1", b"")
    assert "Content-Type" not in headers


async def test_the_call_carries_the_trace_context(service: Factory) -> None:
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        trace.set_tracer_provider(TracerProvider())  # as every process does at start-up
    client, script = await service(201)
    with tracer().start_as_current_span("handling a message") as handling:
        await client.post("/payments", {}, idempotency_key="k")
    _, headers, _ = script.requests[0]
    _, trace_id, parent_id, _ = headers["traceparent"].split("-")
    context = handling.get_span_context()
    assert trace_id == format(context.trace_id, "032x")
    # The parent is the call's own client span, a child of the handling span.
    assert parent_id != format(context.span_id, "016x")


@pytest.mark.parametrize("transient", [503, 500, 408, 429, DISCONNECT, SLOW, NOT_JSON])
async def test_transient_failures_are_retried_in_process(
    service: Factory, transient: Answer
) -> None:
    client, script = await service(transient, transient, 201, attempts=3)
    assert await client.post("/p", {}, idempotency_key="k") == {"status": "ok"}
    assert len(script.requests) == 3
    assert {headers["Idempotency-Key"] for _, headers, _ in script.requests} == {"k"}


@pytest.mark.parametrize(
    ("transient", "says"),
    [
        (503, "answered 503"),
        (SLOW, "timed out"),
        (DISCONNECT, "unreachable"),
        (NOT_JSON, "not JSON"),
    ],
)
async def test_transient_failure_surfaces_after_the_last_attempt(
    service: Factory, transient: Answer, says: str
) -> None:
    client, script = await service(transient, attempts=3)
    with pytest.raises(TransientFailure, match=says):
        await client.post("/p", {}, idempotency_key="k")
    assert len(script.requests) == 3


async def test_a_service_nobody_listens_on_is_transient() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago, now closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with aiohttp.ClientSession() as http:
        client = ServiceClient("payment", http, f"http://127.0.0.1:{port}", attempts=2)
        with pytest.raises(TransientFailure, match="unreachable"):
            await client.post("/p", {}, idempotency_key="k")


@pytest.mark.parametrize("status", [400, 401, 404, 409, 422])
async def test_other_client_errors_are_permanent_and_not_retried(
    service: Factory, status: int
) -> None:
    client, script = await service(status, attempts=3)
    with pytest.raises(PermanentFailure, match=str(status)):
        await client.post("/p", {}, idempotency_key="k")
    assert len(script.requests) == 1


async def test_a_refusal_carries_its_status_and_body(service: Factory) -> None:
    client, _ = await service(409, attempts=3)
    with pytest.raises(ServiceRefused) as refused:
        await client.post("/p", {}, idempotency_key="k")
    assert (refused.value.status, refused.value.body) == (409, {"status": "ok"})
    assert refused.value.reason is None  # the body has no `reason`


@pytest.mark.parametrize(
    ("body", "reason"),
    [({"reason": "cancelled"}, "cancelled"), ({"reason": 1}, None), ("<html>", None), (None, None)],
)
def test_a_refusals_reason_is_its_bodys_reason_string(body: object, reason: str | None) -> None:
    assert ServiceRefused("production service answered 409", 409, body).reason == reason


async def test_the_breaker_opens_and_stops_calling_a_service_that_is_down(
    service: Factory,
) -> None:
    settings = load_settings(breaker_threshold=3, breaker_pause=60)
    client, script = await service(503, attempts=1, breakers=build_breakers(settings))
    for _ in range(3):
        with pytest.raises(TransientFailure, match="503"):
            await client.post("/p", {}, idempotency_key="k")
    with pytest.raises(TransientFailure, match="circuit breaker is open") as stopped:
        await client.post("/p", {}, idempotency_key="k")
    assert len(script.requests) == 3  # the fourth call never left the process
    # The cause stays visible (in a dead letter's last error, say).
    assert "the last failure: payment service answered 503" in str(stopped.value)


async def test_permanent_failures_do_not_open_the_breaker(service: Factory) -> None:
    settings = load_settings(breaker_threshold=2, breaker_pause=60)
    client, _ = await service(422, 422, 422, 201, attempts=1, breakers=build_breakers(settings))
    for _ in range(3):
        with pytest.raises(PermanentFailure):
            await client.post("/p", {}, idempotency_key="k")
    assert await client.post("/p", {}, idempotency_key="k") == {"status": "ok"}


async def test_the_breaker_lets_a_trial_call_through_after_the_pause(service: Factory) -> None:
    settings = load_settings(breaker_threshold=1, breaker_pause=0.05)
    client, _ = await service(503, 201, attempts=1, breakers=build_breakers(settings))
    with pytest.raises(TransientFailure):
        await client.post("/p", {}, idempotency_key="k")
    await asyncio.sleep(0.1)  # the pause itself is what is under test here
    assert await client.post("/p", {}, idempotency_key="k") == {"status": "ok"}
