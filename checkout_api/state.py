"""What the lifespan builds and every request reads (Starlette's typed lifespan state)."""

from __future__ import annotations

from typing import TypedDict

from checkout_api.broker import BrokerLink
from checkout_api.metrics import ApiMetrics
from infra.auth.keys import KeyChecker
from infra.db.session import UnitOfWork
from infra.settings import Settings


class ApiState(TypedDict):
    settings: Settings
    uow: UnitOfWork
    keys: KeyChecker
    broker: BrokerLink
    metrics: ApiMetrics
