"""Prometheus metrics of the message-driven parts (relay, saga, consumers).

The metrics are module-level objects, as is prometheus-client's idiom, but on no
registry: each process serves at `/metrics` (its health port, `infra.health`) the
registry of its component (`registry_for`), which holds only the families that
component measures (`MEASURED_BY`), plus the process and Python collectors and
FastStream's per-handler counters. A saga reporting `checkout_outbox_pending_rows 0`
would say something false: only the relay knows. A new metric goes in `MEASURED_BY`
under each component that sets it. The API keeps a registry of its own
(`checkout_api.metrics`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

SAGA_TRANSITIONS = Counter(
    "checkout_saga_transitions_total",
    "Saga transitions applied, by state before and after",
    ["from_state", "to_state"],
    registry=None,
)
ACTIVE_CHECKOUTS = Gauge(
    "checkout_active_checkouts",
    "Checkouts not yet final, by state (sampled by the relay)",
    ["state"],
    registry=None,
)
OUTBOX_PENDING = Gauge(
    "checkout_outbox_pending_rows", "Outbox rows not yet published", registry=None
)
OUTBOX_OLDEST_AGE = Gauge(
    "checkout_outbox_oldest_age_seconds",
    "Age of the oldest unpublished outbox row",
    registry=None,
)
MESSAGES_PUBLISHED = Counter(
    "checkout_messages_published_total",
    "Messages published and confirmed by the broker",
    ["exchange", "routing_key"],
    registry=None,
)
RELAY_LAG = Histogram(
    "checkout_relay_lag_seconds",
    "Time from an outbox row's commit-time insert to its confirmed publish",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=None,
)
CONSUMED = Counter(
    "checkout_consumer_messages_total",
    "Messages handled by a consumer, by outcome: done, duplicate, retried, dead_lettered",
    ["queue", "outcome"],
    registry=None,
)
HANDLING_SECONDS = Histogram(
    "checkout_consumer_handling_seconds",
    "Time a consumer spent on one message, whatever the outcome",
    ["queue"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=None,
)
DLQ_DEPTH = Gauge(
    "checkout_dead_letter_messages",
    "Messages waiting in a dead-letter queue",
    ["queue"],
    registry=None,
)
SERVICE_CALLS = Counter(
    "checkout_service_calls_total",
    "Calls to external services by outcome: success, transient, permanent, circuit_open",
    ["service", "outcome"],
    registry=None,
)
BREAKER_OPEN = Gauge(
    "checkout_circuit_breaker_open",
    "1 while a service's circuit breaker is open (or half-open), else 0",
    ["service"],
    registry=None,
)
CANCELLATION_TRANSITIONS = Counter(
    "checkout_cancellation_transitions_total",
    "Cancellation saga transitions applied by the saga, by state before and after",
    ["from_state", "to_state"],
    registry=None,
)
ACTIVE_CANCELLATIONS = Gauge(
    "checkout_active_cancellations",
    "Cancellations not yet final, by state (sampled by the relay)",
    ["state"],
    registry=None,
)
STUCK = Gauge(
    "checkout_stuck",
    "Checkouts and cancellations not final for longer than the stuck threshold",
    ["kind", "state"],
    registry=None,
)
BROKER_CONNECTED = Gauge(
    "checkout_broker_connected",
    "1 while this connection to RabbitMQ is open, 0 while it is lost and reconnecting",
    ["connection"],
    registry=None,
)
REFUNDS = Counter(
    "checkout_refunds_total",
    "Refund attempts by outcome: succeeded, failed (retried or dead-lettered)",
    ["outcome"],
    registry=None,
)

# Every message-driven part holds broker connections (`infra.messaging.connect`).
_CONSUMER: tuple[Collector, ...] = (CONSUMED, HANDLING_SECONDS, BROKER_CONNECTED)
_CALLER: tuple[Collector, ...] = (SERVICE_CALLS, BREAKER_OPEN)
# What each component measures (its `Worker` component name, or "relay").
MEASURED_BY: Mapping[str, Sequence[Collector]] = {
    "relay": (
        OUTBOX_PENDING,
        OUTBOX_OLDEST_AGE,
        MESSAGES_PUBLISHED,
        RELAY_LAG,
        ACTIVE_CHECKOUTS,
        ACTIVE_CANCELLATIONS,
        DLQ_DEPTH,
        BROKER_CONNECTED,
    ),
    "saga": (SAGA_TRANSITIONS, CANCELLATION_TRANSITIONS, REFUNDS, STUCK, *_CONSUMER, *_CALLER),
    "consumer-invoice": _CONSUMER,
    "consumer-email": (*_CONSUMER, *_CALLER),
    "consumer-production": (*_CONSUMER, *_CALLER),
}

_registries: dict[str, CollectorRegistry] = {}


def registry_for(component: str) -> CollectorRegistry:
    """The registry `component` serves: its own families and the process's (one per
    component and process, made at the first call)."""
    registry = _registries.get(component)
    if registry is None:
        registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        for collector in MEASURED_BY.get(component, ()):
            registry.register(collector)
        _registries[component] = registry
    return registry
