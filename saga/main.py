"""`checkout saga`: the orchestrator and the payment step in one process."""

from __future__ import annotations

import uvloop
from faststream import FastStream

from contracts import ChargePayment, Message
from infra.logging import configure_logging
from infra.messaging.consumer import Handler
from infra.messaging.worker import Resources, Worker
from infra.settings import Settings
from infra.tracing import configure_tracing
from saga.orchestrator import CheckoutSaga
from saga.payment_client import PaymentClient
from saga.payment_step import PaymentStep


def build_worker(settings: Settings) -> Worker:
    """The saga process: the payment step's queue, whose outcomes the orchestrator applies."""
    worker = Worker(settings, "saga")

    def payment_routes(res: Resources) -> dict[type[Message], Handler]:
        service = res.service("payment", res.settings.payment_base_url)
        step = PaymentStep(res.uow, PaymentClient(service), CheckoutSaga(res.uow))
        return {ChargePayment: step.handle}

    worker.consume("payment", payment_routes)
    return worker


def create_app(settings: Settings) -> FastStream:
    return build_worker(settings).app()


def run(settings: Settings) -> None:
    """Run until SIGINT or SIGTERM; messages in hand are finished first."""
    configure_logging(settings, "saga")
    configure_tracing(settings, "saga")
    uvloop.run(create_app(settings).run())
