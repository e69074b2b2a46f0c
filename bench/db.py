"""The benchmark's (and the cluster drill's) own PostgreSQL connections."""

from __future__ import annotations

from typing import Any

import psycopg


async def connect(conninfo: str, **kwargs: Any) -> psycopg.AsyncConnection[Any]:
    """A psycopg connection to `conninfo` that prepares no statement: safe behind
    PgBouncer's transaction pooling whatever `CHECKOUT_DATABASE_PREPARE` says (the
    benchmark's own reads are not what it measures). `kwargs` go to psycopg
    (`autocommit=True`...)."""
    return await psycopg.AsyncConnection.connect(conninfo, prepare_threshold=None, **kwargs)
