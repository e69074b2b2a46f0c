"""`checkout saga`: the orchestrator and the steps (charge, refund, production
cancellation) in one process."""

from __future__ import annotations

import uvloop
from faststream import FastStream

from contracts import (
    CancelProductionOrder,
    ChargePayment,
    Message,
    ReconcilePayment,
    RefundPayment,
)
from infra.db.session import name_connections
from infra.heap import freeze_startup
from infra.http import MAX_BACKOFF
from infra.logging import configure_logging
from infra.messaging.consumer import Handler
from infra.messaging.worker import Resources, Worker
from infra.settings import Settings
from infra.tracing import configure_tracing
from operations.stuck import run_stuck_gauge
from saga.cancellation_deadlines import CancellationDeadlines
from saga.deadlines import run_deadlines
from saga.orchestrator import CheckoutSaga
from saga.payment_client import PaymentClient
from saga.payment_step import PaymentStep
from saga.production_cancel_client import ProductionCancelClient
from saga.production_cancel_step import ProductionCancelStep
from saga.refund_client import RefundClient
from saga.refund_step import RefundStep
from saga.state_machine import late_charge_window


def checkout_saga(res: Resources) -> CheckoutSaga:
    """The checkout saga's shell, with the deadlines and the late-charge window of the
    settings."""
    window = late_charge_window(res.settings.http_timeout, res.settings.http_attempts, MAX_BACKOFF)
    return CheckoutSaga(res.uow, res.settings.payment_deadline, window)


def build_worker(settings: Settings) -> Worker:
    """The saga process: the payment step's queue, whose outcomes the orchestrator
    applies, and the deadline claimer."""
    worker = Worker(settings, "saga")

    def payment_routes(res: Resources) -> dict[type[Message], Handler]:
        service = res.service("payment", res.settings.payment_base_url)
        step = PaymentStep(res.uow, PaymentClient(service), checkout_saga(res))
        return {ChargePayment: step.handle, ReconcilePayment: step.reconcile}

    def refund_routes(res: Resources) -> dict[type[Message], Handler]:
        service = res.service("refunds", res.settings.payment_base_url)
        return {RefundPayment: RefundStep(res.uow, RefundClient(service)).handle}

    def production_cancel_routes(res: Resources) -> dict[type[Message], Handler]:
        service = res.service("production", res.settings.production_base_url)
        step = ProductionCancelStep(res.uow, ProductionCancelClient(service))
        return {CancelProductionOrder: step.handle}

    worker.consume("payment", payment_routes)
    worker.consume("refund", refund_routes)
    worker.consume("production-cancel", production_cancel_routes)

    async def deadlines(res: Resources) -> None:
        await run_deadlines(checkout_saga(res), CancellationDeadlines(res.uow))

    worker.background("deadlines", deadlines)

    async def stuck_gauge(res: Resources) -> None:
        await run_stuck_gauge(res.uow.engine)

    worker.background("stuck gauge", stuck_gauge)
    return worker


def create_app(settings: Settings) -> FastStream:
    return build_worker(settings).app()


def run(settings: Settings) -> None:
    """Run until SIGINT or SIGTERM; messages in hand are finished first."""
    configure_logging(settings, "saga")
    configure_tracing(settings, "saga")
    name_connections(settings, "saga")
    app = create_app(settings)
    freeze_startup()
    uvloop.run(app.run())
