"""Prometheus metrics of one app, in a registry of its own (two apps in a process never collide)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram

from infra.metrics import BROKER_CONNECTED

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class ApiMetrics:
    """The API's counters and histograms; `registry` is what `/metrics` exposes."""

    registry: CollectorRegistry = field(
        default_factory=lambda: CollectorRegistry(auto_describe=True)
    )

    def __post_init__(self) -> None:
        # The API's broker link (`checkout_api.broker`): one family shared by every part.
        self.registry.register(BROKER_CONNECTED)
        self.requests = Counter(
            "http_requests",
            "HTTP requests answered, by method, route template and status code.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "http_request_duration_seconds",
            "Time to answer an HTTP request, by method and route template.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.checkouts_started = Counter(
            "checkouts_started",
            "Checkouts started (a request that returned an already active checkout is not one).",
            registry=self.registry,
        )
        self.cancellations_requested = Counter(
            "cancellations_requested",
            "Cancellations created, by the state their request left them in.",
            ["state"],
            registry=self.registry,
        )
