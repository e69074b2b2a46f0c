"""OpenTelemetry: one trace per checkout, across every process.

The context travels with the data: the API's request span is injected (W3C
`traceparent`) into the outbox row's headers; the relay publishes each row inside a
span that is the row's child and forwards its own context in the message headers;
FastStream's telemetry middleware continues it in every consumer, where outbox rows
and replies written while handling inject it again; each call to an external service
is a client span whose context goes out in the request's `traceparent`
(`infra.http`). Retried and dead-lettered copies keep their headers, so
a replay joins the same trace.

The SDK tracer provider is always installed, so logs and the checkout timeline have
trace ids. Export is off unless the standard variables ask for it:
`OTEL_TRACES_EXPORTER=otlp` (or `console`), or an `OTEL_EXPORTER_OTLP_ENDPOINT` /
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`; `OTEL_SDK_DISABLED=true` turns it all off. While
export is off, spans carry ids but are not recorded (`build_provider`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

from infra.settings import Settings

TRACER_NAME = "checkout"


def configure_tracing(settings: Settings, component: str) -> None:
    """Install the tracer provider of this process (once, at start-up)."""
    provider = build_provider(settings, component, os.environ)
    if provider is not None:
        trace.set_tracer_provider(provider)


def build_provider(
    settings: Settings, component: str, environ: Mapping[str, str]
) -> TracerProvider | None:
    """The tracer provider `environ` asks for (None: OpenTelemetry disabled).

    With no exporter, spans are not recorded (`ALWAYS_OFF`), unless
    `OTEL_TRACES_SAMPLER` says otherwise: each still gets its ids, so the context still
    travels in `traceparent` and logs and the timeline still carry trace ids, but
    nothing builds span objects, attributes and events that nobody collects (they were
    a twentieth of every part's CPU per message).
    """
    if environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return None
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").lower()
    endpoint = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    )
    processor: BatchSpanProcessor | None = None
    if exporter == "otlp" or (not exporter and endpoint):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        processor = BatchSpanProcessor(OTLPSpanExporter())
    elif exporter == "console":
        processor = BatchSpanProcessor(ConsoleSpanExporter())
    # None: the SDK's default (OTEL_TRACES_SAMPLER, else parent-based always-on).
    sampler = ALWAYS_OFF if processor is None and not environ.get("OTEL_TRACES_SAMPLER") else None
    provider = TracerProvider(
        resource=Resource.create(
            {"service.name": f"checkout-{component}", "service.namespace": settings.namespace}
        ),
        sampler=sampler,
    )
    if processor is not None:
        provider.add_span_processor(processor)
    return provider


# A proxy: it follows whichever provider is installed, and caches the real tracer after
# its first span. The SDK's `get_tracer` builds a new tracer on every call, which a
# span per service call should not pay.
_TRACER = trace.ProxyTracer(TRACER_NAME)


def tracer() -> trace.Tracer:
    return _TRACER


def inject(headers: MutableMapping[str, Any], context: Context | None = None) -> None:
    """Write the current (or given) trace context into message headers."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    headers.update(carrier)


def extract(headers: Mapping[str, Any]) -> Context:
    """The trace context carried by message headers (empty if none)."""
    return propagate.extract({k: str(v) for k, v in headers.items() if isinstance(v, str)})


def spans_recorded(provider: trace.TracerProvider | None = None) -> bool:
    """Whether `provider` (the installed one unless given) records spans: it has an
    exporter, or a sampler was asked for.

    When it does not, a consumer need not build a span per message: continuing the
    trace carried by the message's headers gives its logs, the spans it starts and the
    messages it sends the same trace id.
    """
    provider = provider or trace.get_tracer_provider()
    return isinstance(provider, TracerProvider) and provider.sampler is not ALWAYS_OFF


def current_trace_id() -> str | None:
    """The current trace id as 32 hex digits, or None outside a recorded span."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


def add_trace_ids(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: every line logged inside a span carries its trace and span ids."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event.setdefault("trace_id", format(context.trace_id, "032x"))
        event.setdefault("span_id", format(context.span_id, "016x"))
    return event
