"""Composition root of a message-consuming process (the saga, each consumer).

`Worker` registers its subscribers when it is built (so the AsyncAPI document can be
generated without I/O), and creates the process's resources (database engine,
publisher, HTTP client) in FastStream's lifespan, closing them after the broker has
stopped and the messages in hand are finished.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import aiohttp
from aio_pika import RobustConnection
from faststream import BaseMiddleware, FastStream
from faststream.message import StreamMessage
from faststream.rabbit import RabbitBroker
from faststream.rabbit.opentelemetry import RabbitTelemetryMiddleware
from opentelemetry import context as otel_context
from purgatory import AsyncCircuitBreakerFactory
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts import Message
from infra.db.session import UnitOfWork, create_engine, create_pool
from infra.health import ReadinessCheck, serving_health
from infra.http import ServiceClient, build_breakers, build_http_client
from infra.messaging.connect import RECONNECT_INTERVAL_S, ConnectionWatch, failover_class
from infra.messaging.consumer import Handler, QueueConsumer, subscribe
from infra.messaging.publisher import Publisher
from infra.messaging.topology import Topology, declare_apart
from infra.settings import Settings
from infra.timeline.record import Event, write_events
from infra.tracing import extract, spans_recorded

if TYPE_CHECKING:
    from faststream.rabbit.utils import RabbitClientProperties

# Seconds the broker waits at shutdown for messages in hand to finish.
GRACEFUL_TIMEOUT = 30.0


@dataclass(frozen=True)
class Resources:
    """What handlers may use; built at start-up, closed at shutdown."""

    settings: Settings
    topology: Topology
    uow: UnitOfWork
    publisher: Publisher
    http: aiohttp.ClientSession
    breakers: AsyncCircuitBreakerFactory

    def service(self, name: str, base_url: str) -> ServiceClient:
        """A client for one external service, with retries and its circuit breaker."""
        return ServiceClient(
            name, self.http, base_url, attempts=self.settings.http_attempts, breakers=self.breakers
        )


RouteFactory = Callable[[Resources], Mapping[type[Message], Handler]]
Background = Callable[[Resources], Coroutine[Any, Any, None]]
"""A task the process runs beside its consumers (a timer, say), cancelled at shutdown."""


def engine_ok(engine: AsyncEngine) -> ReadinessCheck:
    """A readiness check: the database answers `SELECT 1`."""

    async def check() -> bool:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        return True

    return check


class FailoverBroker(RabbitBroker):
    """FastStream's broker on a `FailoverConnection` over every URL of the settings,
    watched by a `ConnectionWatch` (one warning per outage, the connected gauge).

    FastStream hands its connection arguments to `aio_pika.connect_robust` as they are,
    so the connection class is one more of them.
    """

    def __init__(self, urls: list[str], name: str, **kwargs: Any) -> None:
        super().__init__(urls[0], reconnect_interval=RECONNECT_INTERVAL_S, **kwargs)
        # RabbitBroker has no parameter for it: added to what it passes on.
        self._connection_kwargs["connection_class"] = failover_class(urls)
        self._watch = ConnectionWatch(name)

    async def _connect(self) -> RobustConnection:
        connection = await super()._connect()
        self._watch.attach(connection)
        return connection


class TraceContinuation(BaseMiddleware):
    """Continues the trace a message carries around its handler, building no span.

    Used while spans are not recorded (`infra.tracing.spans_recorded`): FastStream's
    telemetry middleware would build a consumer span per message that nobody collects
    (a twentieth of a worker's CPU), yet the trace id is all that is used then: in the
    handler's log lines, the spans it starts and the messages it sends.
    """

    async def consume_scope(
        self, call_next: Callable[[Any], Awaitable[Any]], msg: StreamMessage[Any]
    ) -> Any:
        token = otel_context.attach(extract(msg.headers))
        try:
            return await call_next(msg)
        finally:
            otel_context.detach(token)


class Worker:
    """One process consuming one or more queues."""

    def __init__(self, settings: Settings, component: str) -> None:
        self.settings = settings
        self.component = component
        self.topology = Topology.from_settings(settings)
        name = f"{settings.namespace}.{component}"
        self.broker = FailoverBroker(
            settings.rabbit_urls,
            name,
            # Passed through to aio-pika; FastStream's TypedDict lacks the key.
            client_properties=cast("RabbitClientProperties", {"connection_name": name}),
            graceful_timeout=GRACEFUL_TIMEOUT,
            # FastStream's per-message "Received/Processed" lines: debug only; our
            # shell logs what matters (retries, dead-letters) with the message ids.
            log_level=logging.DEBUG,
            # Plain stdlib loggers: they propagate to the root handler that
            # `configure_logging` set up, so FastStream's lines are JSON or console
            # like ours instead of FastStream's own coloured format.
            logger=logging.getLogger("checkout.broker"),
            # Continues the trace carried in each message's headers (W3C traceparent)
            # around the handler, so what it writes joins it; with a consumer span per
            # message only if spans are recorded. (No FastStream Prometheus middleware:
            # the shell counts each queue's messages by outcome and times them itself,
            # and the middleware's second set of counters cost 7-15% of a worker's CPU
            # at full speed; README "The benchmark".)
            middlewares=[RabbitTelemetryMiddleware() if spans_recorded() else TraceContinuation],
        )
        self._consumers: list[tuple[QueueConsumer, RouteFactory]] = []
        self._background: list[tuple[str, Background]] = []
        self.health_port: int | None = None  # bound at start-up

    def consume(self, queue_key: str, routes: RouteFactory) -> QueueConsumer:
        """Subscribe to the queue named by `queue_key`; `routes` builds its handlers at start."""
        consumer = QueueConsumer(self.topology.queues[queue_key], jitter=self.settings.retry_jitter)
        subscribe(self.broker, consumer, prefetch=self.settings.prefetch)
        self._consumers.append((consumer, routes))
        return consumer

    def background(self, name: str, task: Background) -> None:
        """Run `task(resources)` while the process runs; cancelled before the resources close."""
        self._background.append((name, task))

    @asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        # Declared on a connection of its own, apart from the publishing and consuming
        # channels (`declare_apart`), so that no reconnect of theirs re-declares it.
        await declare_apart(self.settings.rabbit_url.get_secret_value(), self.topology)
        engine = create_engine(self.settings)
        publisher = await Publisher.connect(
            self.settings.rabbit_url.get_secret_value(),
            name=f"{self.settings.namespace}.{self.component}.publisher",
        )
        http = build_http_client(self.settings)
        # The handlers' transactions use a psycopg pool of their own (see
        # `infra.db.session`); the engine serves the rest (timeline notes, health).
        pool = create_pool(self.settings)
        await pool.open(wait=False)
        try:
            resources = Resources(
                self.settings,
                self.topology,
                UnitOfWork(engine, pool),
                publisher,
                http,
                build_breakers(self.settings),
            )
            uow = resources.uow

            async def record(events: Sequence[Event]) -> bool:
                return await write_events(uow, events)

            for consumer, routes in self._consumers:
                consumer.bind(routes(resources), publisher, record)
            checks = {"broker": lambda: self.broker.ping(timeout=2), "database": engine_ok(engine)}
            tasks = [
                asyncio.create_task(task(resources), name=name) for name, task in self._background
            ]
            try:
                async with serving_health(self.settings, self.component, checks) as port:
                    self.health_port = port
                    yield
            finally:
                for running in tasks:
                    running.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await http.close()
            await publisher.close()
            await pool.close()
            await engine.dispose()

    def app(self) -> FastStream:
        return FastStream(
            self.broker, lifespan=self.lifespan, logger=logging.getLogger("checkout.worker")
        )

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Worker]:
        """Start resources and subscribers in this event loop (tests, embedding)."""
        async with self.lifespan():
            await self.broker.start()
            try:
                yield self
            finally:
                await self.broker.stop()
