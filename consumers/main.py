"""`checkout consumer NAME`: one of the three consumers of public events in its own process."""

from __future__ import annotations

from collections.abc import Callable

import uvloop
from faststream import FastStream

from consumers.email import EmailConsumer
from consumers.invoice import InvoiceConsumer
from consumers.production import ProductionConsumer
from contracts import Message, OrderCancelled, OrderPaid
from infra.db.session import name_connections
from infra.heap import freeze_startup
from infra.logging import configure_logging
from infra.messaging.consumer import Handler
from infra.messaging.worker import Resources, Worker
from infra.settings import Settings
from infra.tracing import configure_tracing


def _invoice(res: Resources) -> dict[type[Message], Handler]:
    consumer = InvoiceConsumer(res.uow)
    return {OrderPaid: consumer.handle, OrderCancelled: consumer.handle_cancelled}


def _email(res: Resources) -> dict[type[Message], Handler]:
    service = res.service("email", res.settings.email_base_url)
    consumer = EmailConsumer(res.uow, service)
    return {OrderPaid: consumer.handle, OrderCancelled: consumer.handle_cancelled}


def _production(res: Resources) -> dict[type[Message], Handler]:
    service = res.service("production", res.settings.production_base_url)
    return {OrderPaid: ProductionConsumer(res.uow, service).handle}


CONSUMERS: dict[str, Callable[[Resources], dict[type[Message], Handler]]] = {
    "invoice": _invoice,
    "email": _email,
    "production": _production,
}


def build_worker(settings: Settings, name: str) -> Worker:
    """The process of consumer `name`: its own queue, retry and dead-letter queues."""
    if name not in CONSUMERS:
        raise ValueError(f"unknown consumer {name!r}; choose one of {', '.join(CONSUMERS)}")
    worker = Worker(settings, f"consumer-{name}")
    worker.consume(name, CONSUMERS[name])
    return worker


def create_app(settings: Settings, name: str) -> FastStream:
    return build_worker(settings, name).app()


def run(settings: Settings, name: str) -> None:
    """Run until SIGINT or SIGTERM; the messages in hand are finished first."""
    configure_logging(settings, f"consumer-{name}")
    configure_tracing(settings, f"consumer-{name}")
    name_connections(settings, f"consumer-{name}")
    app = create_app(settings, name)
    freeze_startup()
    uvloop.run(app.run())
