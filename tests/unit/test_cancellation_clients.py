"""The cancellation's step clients against a scripted HTTP server: what each answer means."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from infra.http import ServiceClient
from infra.messaging.failures import PermanentFailure, TransientFailure
from saga.production_cancel_client import ProductionCancelClient, Refused, Released
from saga.refund_client import RefundClient, Refunded

Answer = tuple[int, Any]
Served = tuple[ServiceClient, list[tuple[str, dict[str, str], Any]]]
Factory = Callable[..., Awaitable[Served]]


@pytest.fixture
async def service() -> AsyncIterator[Factory]:
    async with AsyncExitStack() as stack:
        http = await stack.enter_async_context(aiohttp.ClientSession())

        async def make(*answers: Answer) -> Served:
            script = list(answers)
            seen: list[tuple[str, dict[str, str], Any]] = []

            async def handle(request: web.Request) -> web.StreamResponse:
                seen.append((request.path, dict(request.headers), json.loads(await request.read())))
                status, body = script.pop(0) if len(script) > 1 else script[0]
                return web.json_response(body, status=status)

            app = web.Application()
            app.router.add_post("/{tail:.*}", handle)
            server = TestServer(app, host="127.0.0.1")
            await server.start_server()
            stack.push_async_callback(server.close)
            client = ServiceClient("svc", http, str(server.make_url("")), max_backoff=0.01)
            return client, seen

        yield make


async def refund(client: ServiceClient) -> Refunded:
    return await RefundClient(client).refund(
        provider_payment_id="pay-1",
        amount=Decimal("19.05"),
        currency="USD",
        reason="changed my mind",
        idempotency_key="cancel-1",
    )


async def test_a_refund_sends_the_payment_and_the_key(service: Factory) -> None:
    client, seen = await service((201, {"refund_id": "ref-1", "status": "SUCCEEDED"}))
    assert await refund(client) == Refunded("ref-1", 1)
    path, headers, body = seen[0]
    assert path == "/refunds"
    assert headers["Idempotency-Key"] == "cancel-1"
    assert body == {
        "payment_id": "pay-1",
        "amount": "19.05",
        "currency": "USD",
        "reason": "changed my mind",
    }


async def test_a_refund_that_fails_twice_is_retried_with_the_same_key(service: Factory) -> None:
    client, seen = await service(
        (503, {}), (503, {}), (201, {"refund_id": "ref-1", "status": "SUCCEEDED"})
    )
    assert await refund(client) == Refunded("ref-1", 3)
    assert {h["Idempotency-Key"] for _, h, _ in seen} == {"cancel-1"}


async def test_a_refund_that_keeps_failing_is_transient(service: Factory) -> None:
    client, _ = await service((503, {}))
    with pytest.raises(TransientFailure):
        await refund(client)


async def test_an_unknown_refund_answer_is_permanent(service: Factory) -> None:
    client, _ = await service((201, {"status": "MAYBE"}))
    with pytest.raises(PermanentFailure):
        await refund(client)


async def cancel(client: ServiceClient, order_id: uuid.UUID) -> Released | Refused:
    return await ProductionCancelClient(client).cancel(order_id=order_id, idempotency_key="c-1")


async def test_production_lets_the_order_go(service: Factory) -> None:
    client, seen = await service((200, {"status": "CANCELLED"}))
    order_id = uuid.uuid4()
    assert await cancel(client, order_id) == Released(1)
    path, headers, _ = seen[0]
    assert path == f"/production/orders/{order_id}/cancel"
    assert headers["Idempotency-Key"] == "c-1"


async def test_a_409_is_a_refusal_with_its_reason(service: Factory) -> None:
    client, seen = await service((409, {"reason": "already_in_production"}))
    assert await cancel(client, uuid.uuid4()) == Refused("already_in_production")
    assert len(seen) == 1  # an answer, not a failure: not retried


async def test_another_4xx_is_a_permanent_failure(service: Factory) -> None:
    client, _ = await service((422, {"detail": "bad"}))
    with pytest.raises(PermanentFailure):
        await cancel(client, uuid.uuid4())


async def test_production_down_is_transient(service: Factory) -> None:
    client, seen = await service((503, {}))
    with pytest.raises(TransientFailure):
        await cancel(client, uuid.uuid4())
    assert len(seen) == 3
