"""One checkout is one trace: API, relay, saga, payment call and all three consumers.

An in-memory exporter collects the spans of the in-process pipeline; the trace id of
the checkout request's server span must be shared by every hop.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import text

from infra.db.models import EmailNotification, Invoice, ProductionSubmission
from tests.support.pipeline import Pipeline
from tests.support.polling import eventually

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", autouse=True)
def spans() -> Iterator[InMemorySpanExporter]:
    """Installed before the module's pipeline, so every part it builds is traced."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.shutdown()


def _trace_of(spans: list[ReadableSpan], checkout_id: str) -> tuple[int, list[ReadableSpan]]:
    """The spans sharing the trace of the request that started `checkout_id`."""
    server = next(
        s
        for s in spans
        if s.kind == trace.SpanKind.SERVER and s.name == "POST /orders/{order_id}/checkout"
    )
    trace_id = server.context.trace_id
    return trace_id, [s for s in spans if s.context.trace_id == trace_id]


async def test_one_checkout_is_one_trace(pipeline: Pipeline, spans: InMemorySpanExporter) -> None:
    spans.clear()
    order = await pipeline.order("21.00")
    checkout = await pipeline.checkout(order["order_id"])
    final = await pipeline.final(checkout["checkout_id"])
    assert final["state"] == "PAID"
    oid = order["order_id"]

    async def effects() -> tuple[int, int, int]:
        return (
            await pipeline.rows(Invoice, oid),
            await pipeline.rows(EmailNotification, oid),
            await pipeline.rows(ProductionSubmission, oid),
        )

    await eventually(effects, until=lambda e: e == (1, 1, 1), what="all three effects")

    ns = pipeline.settings.namespace
    hops = {
        "outbox publish payment.charge",
        f"{ns}.internal.payment.charge process",  # payment step, which applies the outcome
        "POST /payments",
        "outbox publish order.paid",
        "POST /emails",
        "POST /production/orders",
    }
    consumed = f"{ns}.orders.order.paid process"

    async def in_trace() -> list[ReadableSpan]:
        return _trace_of(list(spans.get_finished_spans()), checkout["checkout_id"])[1]

    def complete(found: list[ReadableSpan]) -> bool:
        names = [s.name for s in found]
        return hops <= set(names) and names.count(consumed) >= 3  # invoice, email, production

    found = await eventually(
        in_trace, until=complete, timeout=15, what="every hop in one trace", interval=0.1
    )
    assert len({s.context.trace_id for s in found}) == 1
    trace_id = found[0].context.trace_id
    # The checkout row remembers the trace it started in.
    async with pipeline.engine.connect() as conn:
        stored = (
            await conn.execute(
                text("SELECT trace_id FROM checkouts WHERE checkout_id = :c"),
                {"c": checkout["checkout_id"]},
            )
        ).scalar_one()
    assert stored == format(trace_id, "032x")
