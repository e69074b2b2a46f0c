"""Is the API able to serve: can it reach the database and the broker?"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import structlog
from sqlalchemy import text

from checkout_api.broker import BrokerLink
from infra.db.session import UnitOfWork

log = structlog.get_logger(__name__)

CHECK_TIMEOUT = 2.0
OK = "ok"


@dataclass(frozen=True, slots=True)
class Readiness:
    """Each dependency's state: "ok" or why not."""

    database: str
    broker: str

    @property
    def ready(self) -> bool:
        return self.database == OK and self.broker == OK

    @property
    def failed(self) -> list[str]:
        return [
            name
            for name, state in (("database", self.database), ("broker", self.broker))
            if state != OK
        ]


async def _database(uow: UnitOfWork) -> str:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT), uow.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except TimeoutError:
        log.warning("readiness: database did not answer", timeout=CHECK_TIMEOUT)
        return "timeout"
    except Exception as exc:  # any failure means not ready; the reason goes to the log
        log.warning("readiness: database unreachable", error=repr(exc))
        return "unreachable"
    return OK


async def check_readiness(uow: UnitOfWork, broker: BrokerLink) -> Readiness:
    return Readiness(
        database=await _database(uow),
        broker=OK if broker.is_connected else "unreachable",
    )
