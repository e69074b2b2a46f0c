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
  if it reaches PostgreSQL itself. Over TCP: PostgreSQL's end of it is the very address
  and port the client connected to. A pooler or proxy in between is a server of its
  own, with an address or port of its own, so the two ends differ and nothing is
  prepared. Over a Unix socket: the process serving the socket (its peer credentials)
  is the postmaster, the parent of the backend that answers. Anything that cannot be
  told (an error asking, another pid namespace) counts as a pooler. Only an
  intercepting proxy that keeps the server's address, such as a pooler behind an
  iptables redirect, cannot be told apart: there, set `false`.

The connections SQLAlchemy's engine makes (operator commands, timeline notes, health)
prepare only with `true`: they are not on a hot path.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import struct
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

_SERVER_END = "SELECT host(inet_server_addr()), inet_server_port(), pg_backend_pid()"
"""Where PostgreSQL's end of this connection is: its address and port (NULL for a Unix
socket), and the backend serving it. Any role may ask."""

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
    """Whether PostgreSQL's end of `conn` is the one the client connected to; and why.

    Anything that fails on the way counts as "no": preparing nothing is always safe.
    """
    idle = conn.info.transaction_status == TransactionStatus.IDLE
    try:
        # As a tuple whatever the connection's row factory (the relay's gives dicts).
        async with conn.cursor(row_factory=tuple_row) as cursor:
            row = await (await cursor.execute(_SERVER_END)).fetchone()
        family, peer, peer_pid = _peer(conn)
    except (psycopg.Error, OSError) as exc:
        return False, f"could not tell where the connection goes: {exc}"
    finally:
        if idle and conn.info.transaction_status != TransactionStatus.IDLE:
            # On a connection broken meanwhile this fails too: the answer stays "no",
            # and the pool finds the connection broken.
            with contextlib.suppress(psycopg.Error):
                await conn.rollback()
    if row is None:  # pragma: no cover - a SELECT of functions returns its row
        return False, "PostgreSQL did not say where its end of the connection is"
    addr, port, backend = row
    return same_end(family, peer, addr, port, peer_pid=peer_pid, parent=_parent_of(backend))


def _peer(conn: psycopg.AsyncConnection[Any]) -> tuple[int, Any, int | None]:
    """The connection's socket family, the address it is connected to and, on a Unix
    socket, the pid of the process serving it (its peer credentials)."""
    with socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock:
        pid = None
        if sock.family == socket.AF_UNIX and hasattr(socket, "SO_PEERCRED"):
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDS.size)
            pid = _CREDS.unpack(creds)[0] or None  # 0: not in this pid namespace
        return sock.family, sock.getpeername(), pid


_CREDS = struct.Struct("3i")  # struct ucred: pid, uid, gid


def _parent_of(pid: int) -> int | None:
    """The parent of process `pid` on this machine (None: no such process to read)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def same_end(
    family: int,
    peer: Any,
    addr: str | None,
    port: int | None,
    *,
    peer_pid: int | None = None,
    parent: int | None = None,
) -> tuple[bool, str]:
    """Whether the client's peer (`family`, `peer`) is PostgreSQL's own end of the
    connection (`addr`, `port`: NULLs on a Unix socket, where the process serving the
    socket, `peer_pid`, must be the postmaster, the `parent` of the backend); and why,
    for the log."""
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
        if peer_pid is not None and peer_pid == parent:
            return True, f"connected to PostgreSQL's own socket {peer} (postmaster {peer_pid})"
        return False, (
            f"connected to {peer!r}, served by process {peer_pid}, not the postmaster of "
            f"the backend (its parent: {parent}): a pooler, or not to be told"
        )
    return False, f"a connection of socket family {family}"


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address as comparable: an IPv6 scope dropped, an IPv4-mapped one as IPv4."""
    ip = ipaddress.ip_address(text.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip
