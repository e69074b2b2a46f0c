"""Which tracer provider a process gets from the standard OpenTelemetry variables."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.trace import Span, TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

from infra.settings import load_settings
from infra.tracing import build_provider, inject


def _span_of(environ: dict[str, str]) -> tuple[TracerProvider, Span]:
    provider = build_provider(load_settings(), "test", environ)
    assert provider is not None
    span = provider.get_tracer("test").start_span("handling a message")
    return provider, span  # type: ignore[return-value]


def test_without_an_exporter_spans_carry_ids_but_are_not_recorded() -> None:
    provider, span = _span_of({})
    assert provider.sampler is ALWAYS_OFF
    context = span.get_span_context()
    assert not span.is_recording()
    assert context.is_valid  # logs and the timeline still get a trace id
    headers: dict[str, str] = {}
    inject(headers, trace.set_span_in_context(span))
    assert headers["traceparent"].split("-")[1] == format(context.trace_id, "032x")


def test_an_exporter_records_spans() -> None:
    provider, span = _span_of({"OTEL_TRACES_EXPORTER": "console"})
    assert span.is_recording()
    provider.shutdown()


def test_an_explicit_sampler_is_kept_without_an_exporter() -> None:
    _, span = _span_of({"OTEL_TRACES_SAMPLER": "always_on"})
    assert span.is_recording()


def test_the_sdk_can_be_disabled() -> None:
    assert build_provider(load_settings(), "test", {"OTEL_SDK_DISABLED": "true"}) is None
