"""Engine and unit of work. Built per process from the settings; nothing at import time.

Two ways into a transaction, by how hot the path is: `uow()` yields an ORM session
(operator commands, queries, anything written once in a while), `uow.transaction()`
the pooled connection's own psycopg connection, for the per-message and per-request
paths: a statement there costs psycopg's work alone, with none of SQLAlchemy's
statement compilation, result wrapping or unit-of-work flush, which together cost
several times the round trip itself.

The API and every message-consuming process give their unit of work a psycopg pool
of its own (`create_pool`) for `transaction()` and `reads()`: taking a connection from
it costs a fraction of SQLAlchemy's pool checkout (with its pre-ping round trip), its
connection wrapper and its return, and it keeps its connections instead of opening
and closing overflow ones under load. Without one (tests, commands) they draw from
the engine's pool.

Every connection made here, and every psycopg connection the parts open themselves
(`connect_kwargs`), prepares statements on the server as `CHECKOUT_DATABASE_PREPARE`
says (`infra.db.preparation`): by default ("auto") the pools' connections do when they
reach PostgreSQL itself and never through a pooler, where a prepared statement's name
may name another client's statement; the engine's only when told "true".
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from time import monotonic
from typing import Any, cast
from weakref import WeakKeyDictionary

import psycopg
from psycopg_pool import AsyncConnectionPool
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from infra.db import preparation
from infra.settings import Settings


def name_connections(settings: Settings, component: str) -> None:
    """Name every PostgreSQL connection this process opens after its part
    (`<namespace>.<component>`, PostgreSQL's `application_name`): `pg_stat_activity` then
    says which part holds a connection, waits on a lock or runs a statement. libpq reads
    it from `PGAPPNAME`, which an operator's own setting (or the URL's
    `application_name`) overrides."""
    os.environ.setdefault("PGAPPNAME", f"{settings.namespace}.{component}")


def connect_kwargs(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for every psycopg connection a part opens (see the module doc)."""
    return preparation.connect_kwargs(settings.database_prepare)


def create_engine(settings: Settings, *, pool_size: int | None = None) -> AsyncEngine:
    """An async engine on psycopg 3; `pool_pre_ping` survives a PostgreSQL restart."""
    size = pool_size or settings.db_pool_size
    return create_async_engine(
        settings.database_url.get_secret_value(),
        connect_args=connect_kwargs(settings),
        pool_size=size,
        max_overflow=size,
        pool_pre_ping=True,
        pool_recycle=1800,
    )


# A pooled connection back from work less than this long ago is handed out unchecked.
RECENTLY_USED_S = 2.0

# When each hot-pool connection was last given back (weak: a closed one just drops out).
_returned: WeakKeyDictionary[psycopg.AsyncConnection[Any], float] = WeakKeyDictionary()


async def _check_unless_recent(conn: psycopg.AsyncConnection[Any]) -> None:
    """The pool's check: an empty query, unless the connection just finished a transaction.

    Under load every connection comes back within milliseconds, and a ping per
    transaction would be a third of a short transaction's round trips. A connection
    cut in those two seconds (a PostgreSQL restart) fails its next statement instead:
    the handler raises, the shell retries the message, and the pool discards the
    broken connection when it is given back.
    """
    returned = _returned.get(conn)
    if returned is not None and monotonic() - returned < RECENTLY_USED_S:
        return
    await AsyncConnectionPool.check_connection(conn)


def create_pool(
    settings: Settings, *, max_size: int | None = None, timeout: float = 30.0
) -> AsyncConnectionPool:
    """A psycopg pool for the hot paths, not yet open (`await pool.open()`).

    A connection idle for a while is checked with an empty query as it is handed out
    (like the engine's `pool_pre_ping`, see `_check_unless_recent`), so a PostgreSQL
    restart during a quiet spell costs no message a failed attempt; while the
    database is down, a caller waits up to `timeout` seconds for it to come back, then
    gets `psycopg_pool.PoolTimeout` (a `psycopg.OperationalError`).
    """
    url = make_url(settings.database_url.get_secret_value()).set(drivername="postgresql")
    prepare = settings.database_prepare

    async def configure(conn: psycopg.AsyncConnection[Any]) -> None:
        await preparation.choose_preparation(conn, prepare)

    return AsyncConnectionPool(
        url.render_as_string(hide_password=False),
        kwargs=connect_kwargs(settings),
        min_size=1,
        max_size=max_size or settings.db_pool_size,
        open=False,
        configure=configure,
        check=_check_unless_recent,
        timeout=timeout,
        name=f"{settings.namespace}.hot",
    )


async def psycopg_connection(connection: AsyncConnection) -> psycopg.AsyncConnection[Any]:
    """The psycopg connection under an SQLAlchemy one: statements on it join its transaction."""
    raw = await connection.get_raw_connection()
    return cast("psycopg.AsyncConnection[Any]", raw.driver_connection)


class UnitOfWork:
    """A session factory whose transactions roll back unless `commit()` is called."""

    def __init__(self, engine: AsyncEngine, pool: AsyncConnectionPool | None = None) -> None:
        self.engine = engine
        self.pool = pool
        self._sessions = async_sessionmaker(engine, expire_on_commit=False, autoflush=False)

    @asynccontextmanager
    async def __call__(self) -> AsyncIterator[AsyncSession]:
        """Yield a session; `await session.commit()` is the one path to a change."""
        async with self._sessions() as session:
            try:
                yield session
            finally:
                await session.rollback()  # a no-op after commit

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """Yield a pooled psycopg connection; a COMMIT is the one path to a change.

        psycopg opens the transaction with the first statement; leaving the block without
        a commit (`await conn.commit()`, or a COMMIT statement ending a pipeline) rolls
        it back, after an exception or an early return alike. The connection goes back
        to its pool either way.
        """
        async with self._connection() as driver:
            try:
                yield driver
            finally:
                # A no-op after commit. On a broken connection it fails: the pool drops
                # that connection (the hot pool when it is given back, the engine's at
                # its next pre-ping).
                with suppress(psycopg.Error):
                    await driver.rollback()

    @asynccontextmanager
    async def autocommit(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """Yield a pooled psycopg connection in autocommit: each statement is its own
        transaction.

        For reads, and for a write that is one statement (data-modifying CTEs make
        several writes one): no BEGIN and no COMMIT or ROLLBACK round trips around it.
        Nothing here is atomic with anything else but itself.
        """
        async with self._connection() as driver:
            await driver.set_autocommit(True)
            try:
                yield driver
            finally:
                # Back as the pool hands it out. On a broken connection this fails,
                # and the pool drops that connection as for `transaction()`.
                with suppress(psycopg.Error):
                    await driver.set_autocommit(False)

    def reads(self) -> AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]:
        """A connection for checks that only read (`autocommit`)."""
        return self.autocommit()

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A psycopg connection from the hot-path pool if there is one, else the engine's."""
        if self.pool is not None:
            # getconn/putconn rather than `pool.connection()`, whose exit would commit
            # what the caller did not: here only an explicit commit() changes anything.
            pooled = await self.pool.getconn()
            try:
                yield pooled
            finally:
                _returned[pooled] = monotonic()
                await self.pool.putconn(pooled)
            return
        async with self.engine.connect() as connection:
            yield await psycopg_connection(connection)
