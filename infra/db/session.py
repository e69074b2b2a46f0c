"""Engine and unit of work. Built per process from the settings; nothing at import time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from infra.settings import Settings


def create_engine(settings: Settings, *, pool_size: int | None = None) -> AsyncEngine:
    """An async engine on psycopg 3; `pool_pre_ping` survives a PostgreSQL restart."""
    size = pool_size or settings.db_pool_size
    return create_async_engine(
        settings.database_url.get_secret_value(),
        pool_size=size,
        max_overflow=size,
        pool_pre_ping=True,
        pool_recycle=1800,
    )


class UnitOfWork:
    """A session factory whose transactions roll back unless `commit()` is called."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._sessions = async_sessionmaker(engine, expire_on_commit=False, autoflush=False)

    @asynccontextmanager
    async def __call__(self) -> AsyncIterator[AsyncSession]:
        """Yield a session; `await session.commit()` is the one path to a change."""
        async with self._sessions() as session:
            try:
                yield session
            finally:
                await session.rollback()  # a no-op after commit
