"""Prometheus metrics of the message-driven parts (relay, saga, consumers).

Definitions only: prometheus-client's own idiom of module-level metrics on the
default registry, which each process serves at `/metrics` on its health port
(`infra.health`). FastStream's Prometheus middleware adds its own per-handler
message counters and durations to the same registry. The API keeps a registry of
its own (`checkout_api.metrics`).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

SAGA_TRANSITIONS = Counter(
    "checkout_saga_transitions_total",
    "Saga transitions applied, by state before and after",
    ["from_state", "to_state"],
)
ACTIVE_CHECKOUTS = Gauge(
    "checkout_active_checkouts",
    "Checkouts not yet final, by state (sampled by the relay)",
    ["state"],
)
OUTBOX_PENDING = Gauge("checkout_outbox_pending_rows", "Outbox rows not yet published")
OUTBOX_OLDEST_AGE = Gauge(
    "checkout_outbox_oldest_age_seconds", "Age of the oldest unpublished outbox row"
)
MESSAGES_PUBLISHED = Counter(
    "checkout_messages_published_total",
    "Messages published and confirmed by the broker",
    ["exchange", "routing_key"],
)
RELAY_LAG = Histogram(
    "checkout_relay_lag_seconds",
    "Time from an outbox row's commit-time insert to its confirmed publish",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
CONSUMED = Counter(
    "checkout_consumer_messages_total",
    "Messages handled by a consumer, by outcome: done, duplicate, retried, dead_lettered",
    ["queue", "outcome"],
)
HANDLING_SECONDS = Histogram(
    "checkout_consumer_handling_seconds",
    "Time a consumer spent on one message, whatever the outcome",
    ["queue"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
DLQ_DEPTH = Gauge(
    "checkout_dead_letter_messages", "Messages waiting in a dead-letter queue", ["queue"]
)
SERVICE_CALLS = Counter(
    "checkout_service_calls_total",
    "Calls to external services by outcome: success, transient, permanent, circuit_open",
    ["service", "outcome"],
)
BREAKER_OPEN = Gauge(
    "checkout_circuit_breaker_open",
    "1 while a service's circuit breaker is open (or half-open), else 0",
    ["service"],
)

BROKER_CONNECTED = Gauge(
    "checkout_broker_connected",
    "1 while this connection to RabbitMQ is open, 0 while it is lost and reconnecting",
    ["connection"],
)
