"""Server-side prepared statements where they are safe: `CHECKOUT_DATABASE_PREPARE`.

psycopg prepares a statement it has run five times on a connection under a name of its
own (`_pg3_0`, `_pg3_1`, ...) and from then on only binds and executes it: PostgreSQL
skips the parse and the plan, which for this system's statements (data-modifying CTEs
of a dozen parts) cost the server as much as running them. Measured under the peers
harness at 50 checkouts/s: PostgreSQL 7.4 -> 4.4 ms of CPU per checkout.

Behind a pooler in transaction mode (PgBouncer's usual mode) the next transaction may
run on another server connection, where that name is unknown (the statement fails) or
names another client's statement of the same shape (it runs someone else's SQL). So:

- `false`: psycopg prepares nothing (`connect_kwargs`);
- `true`: it prepares everywhere (every connection goes straight to PostgreSQL);
- `auto`, the default: each hot-path connection (the parts' psycopg pools, the relay's
  connections) is looked at once it is open (`choose_preparation`), and prepares only
  if it reaches PostgreSQL itself: PostgreSQL's end of it is the very address and port
  (or Unix socket) the client connected to. A pooler or proxy in between is a server
  of its own, with an address or port of its own, so the two ends differ and nothing
  is prepared. Only an intercepting proxy that keeps the server's address, such as a
  pooler behind an iptables redirect, cannot be told apart: there, set `false`.

The connections SQLAlchemy's engine makes (operator commands, timeline notes, health)
prepare only with `true`: they are not on a hot path.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from typing import Any, Literal

import psycopg
import structlog
from psycopg.pq import TransactionStatus
from psycopg.rows import tuple_row

log = structlog.get_logger(__name__)

Preparation = Literal["auto"] | bool
"""`CHECKOUT_DATABASE_PREPARE`: True, False or "auto"."""

PREPARE_THRESHOLD = 5
"""psycopg's own default: a statement is prepared on its sixth run on a connection."""

_SERVER_END = (
    "SELECT host(inet_server_addr()), inet_server_port(), current_setting('port'),"
    " current_setting('unix_socket_directories')"
)
"""Where PostgreSQL's end of this connection is: its address and port (NULL for a Unix
socket), the port it listens on, and the folders of its Unix sockets."""

_told: set[bool] = set()  # what this process has logged already: direct, not direct


def connect_kwargs(prepare: Preparation) -> dict[str, Any]:
    """psycopg connection arguments: prepare nothing unless `prepare` is True (with
    "auto", `choose_preparation` turns it on per connection)."""
    return {} if prepare is True else {"prepare_threshold": None}


async def choose_preparation(conn: psycopg.AsyncConnection[Any], prepare: Preparation) -> None:
    """With `prepare` "auto", let psycopg prepare on `conn` if it reaches PostgreSQL itself.

    Costs one round trip, once per connection; leaves the connection as idle as it was.
    """
    if prepare != "auto":
        return
    direct, why = await reaches_postgres_directly(conn)
    if direct:
        conn.prepare_threshold = PREPARE_THRESHOLD
    if direct not in _told:
        _told.add(direct)
        log.info(
            "server-side prepared statements " + ("on" if direct else "off"),
            reason=why,
            setting="CHECKOUT_DATABASE_PREPARE=auto",
        )


async def reaches_postgres_directly(conn: psycopg.AsyncConnection[Any]) -> tuple[bool, str]:
    """Whether PostgreSQL's end of `conn` is the one the client connected to; and why."""
    idle = conn.info.transaction_status == TransactionStatus.IDLE
    try:
        # As a tuple whatever the connection's row factory (the relay's gives dicts).
        async with conn.cursor(row_factory=tuple_row) as cursor:
            row = await (await cursor.execute(_SERVER_END)).fetchone()
    finally:
        if idle and conn.info.transaction_status != TransactionStatus.IDLE:
            await conn.rollback()
    if row is None:  # pragma: no cover - a SELECT of constants returns its row
        return False, "PostgreSQL did not say where its end of the connection is"
    addr, port, listening, folders = row
    family, peer = _peer(conn)
    return same_end(family, peer, addr, port, int(listening), folders)


def _peer(conn: psycopg.AsyncConnection[Any]) -> tuple[int, Any]:
    """The connection's socket family and the address it is connected to."""
    with socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock:
        return sock.family, sock.getpeername()


def same_end(
    family: int, peer: Any, addr: str | None, port: int | None, listening: int, folders: str
) -> tuple[bool, str]:
    """Whether the client's peer (`family`, `peer`) is PostgreSQL's own end of the
    connection (`addr`, `port`; NULLs on a Unix socket, then `listening` and `folders`
    name its socket files); and why, for the log."""
    if family in (socket.AF_INET, socket.AF_INET6):
        there = f"{peer[0]}:{peer[1]}"
        if addr is None or port is None:
            return False, f"connected to {there}, but PostgreSQL sees a Unix socket"
        if _ip(peer[0]) == _ip(addr) and peer[1] == port:
            return True, f"connected to PostgreSQL itself at {there}"
        return False, f"connected to {there}, PostgreSQL's end is {addr}:{port}: a pooler or proxy"
    if family == socket.AF_UNIX:
        if addr is not None:
            return False, f"connected to {peer!r}, PostgreSQL's end is {addr}:{port}"
        sockets = {
            os.path.join(folder.strip(), f".s.PGSQL.{listening}")
            for folder in folders.split(",")
            if folder.strip()
        }
        if peer in sockets:
            return True, f"connected to PostgreSQL's own socket {peer}"
        return False, f"connected to {peer!r}, not one of PostgreSQL's sockets: a pooler"
    return False, f"a connection of socket family {family}"


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address as comparable: an IPv6 scope dropped, an IPv4-mapped one as IPv4."""
    ip = ipaddress.ip_address(text.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip
