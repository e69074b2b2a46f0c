"""Composition root of the `mocks` process: the three simulated systems on one app.

Payment (charges, refunds), Email, and Production (orders, cancellations): five
services, each with its own record; a system's services share its outage switch.

Each call of `create_app` has its own records and switches, so two apps in one process
(e.g. two tests) never see each other's effects.
"""

from __future__ import annotations

from random import Random
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError

from infra.settings import Settings
from mock_services.control import control_router, validation_problem
from mock_services.emails import EMAILS
from mock_services.payment_lookup import payment_lookup_router
from mock_services.payments import PAYMENTS
from mock_services.production import ProductionFloor
from mock_services.refunds import REFUNDS
from mock_services.routes import service_router
from mock_services.service import Chaos, MockService
from mock_services.store import EffectStore

DEFAULT_SLOW_RESPONSE_SECONDS = 10.0


def create_app(
    settings: Settings,
    *,
    slow_response_seconds: float = DEFAULT_SLOW_RESPONSE_SECONDS,
    random: Random | None = None,
) -> FastAPI:
    """Build the app serving the Payment, Email and Production simulations.

    Args:
        settings: `mock_failure_rate` and `mock_latency_ms` apply to every service.
        slow_response_seconds: how long a `.03` payment takes to answer.
        random: the source of random failures (seed it, or stub it, in tests).
    """
    chaos = Chaos(
        failure_rate=settings.mock_failure_rate,
        latency_seconds=settings.mock_latency_ms / 1000,
        slow_seconds=slow_response_seconds,
        rng=random if random is not None else Random(),
    )
    payments = MockService(PAYMENTS, chaos)
    refunds = MockService(REFUNDS, chaos, EffectStore(payments.store.switch))
    floor = ProductionFloor()
    orders, cancellations = floor.specs()
    services: list[MockService[Any]] = [
        payments,
        refunds,
        MockService(EMAILS, chaos),
        MockService(orders, chaos, floor.orders),
        MockService(cancellations, chaos, floor.cancellations),
    ]
    app = FastAPI(title="Simulated external services", version="1.0")
    for service in services:
        app.include_router(service_router(service))
    app.include_router(payment_lookup_router(services[0]))
    app.include_router(control_router(services))
    app.add_exception_handler(RequestValidationError, validation_problem)
    return app
