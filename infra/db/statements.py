"""Several writes sent as one SQL statement.

One statement is one message to the server and one result back, where each write on
its own costs psycopg a send and a poll and PostgreSQL a statement of its own. The hot
paths that write several rows at once (a saga transition, a checkout) fold them here.
"""

from __future__ import annotations

from typing import Any

Statement = tuple[str, tuple[Any, ...]]
"""One write: SQL with `%s` placeholders and its parameters."""


def as_one(writes: list[Statement]) -> Statement:
    """`writes` as one statement: all but the last as data-modifying CTEs.

    The last write is the statement's own, so its RETURNING, if any, is the result.
    PostgreSQL runs every data-modifying CTE to completion, on one snapshot, and checks
    foreign keys when the statement ends: so a write may refer to a row another one
    inserts, but none may read what another writes or touch another's row.
    """
    if not writes:
        raise ValueError("no writes to combine")
    if len(writes) == 1:
        return writes[0]
    *ctes, (last, last_params) = writes
    sql = "WITH " + ", ".join(f"w{i} AS ({cte})" for i, (cte, _) in enumerate(ctes))
    params = tuple(param for _, cte_params in ctes for param in cte_params)
    return f"{sql} {last}", params + last_params
