"""While spans are not recorded, a worker continues each message's trace without a span."""

from __future__ import annotations

import asyncio

import pytest
from faststream.rabbit import RabbitBroker, RabbitQueue
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON

from infra.messaging.worker import TraceContinuation
from infra.settings import Settings
from infra.tracing import current_trace_id, spans_recorded

pytestmark = pytest.mark.integration

TRACE_ID = "4bf92f3577b34da6a3ce929effe1a0f1"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-00"


async def test_a_handler_runs_in_the_trace_its_message_carries(settings: Settings) -> None:
    seen: asyncio.Queue[tuple[str | None, bool]] = asyncio.Queue()
    broker = RabbitBroker(settings.rabbit_url.get_secret_value(), middlewares=[TraceContinuation])
    queue = RabbitQueue(f"{settings.namespace}.trace-continuation", auto_delete=True)

    @broker.subscriber(queue)
    async def handle(body: str) -> None:
        span = trace.get_current_span()
        await seen.put((current_trace_id(), span.is_recording()))

    async with broker:
        await broker.start()
        await broker.publish("traced", queue, headers={"traceparent": TRACEPARENT})
        assert await asyncio.wait_for(seen.get(), timeout=10) == (TRACE_ID, False)
        # A message without a trace runs outside any (the context does not leak over).
        await broker.publish("untraced", queue)
        assert await asyncio.wait_for(seen.get(), timeout=10) == (None, False)
    assert current_trace_id() is None


def test_spans_are_recorded_only_by_a_provider_that_samples() -> None:
    assert not spans_recorded(TracerProvider(sampler=ALWAYS_OFF))
    assert spans_recorded(TracerProvider(sampler=ALWAYS_ON))
    assert not spans_recorded(trace.NoOpTracerProvider())
