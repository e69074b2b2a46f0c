"""Console sessions: signed in with an operator key, held by an opaque cookie.

The cookie carries a random token (256 bits); the database keeps only its SHA-256,
with the key it was opened with, a CSRF token and an expiry. Every request reads the
session joined with its key (one indexed row), so a revoked key, a key that is no
longer an operator's, an expired session and a signed-out one are all refused at once,
in every API process. Nothing is signed with a secret of the process: nothing needs
to be shared between API processes, and sign-out really ends a session, which a
self-contained signed cookie cannot (it stays valid until it expires).
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from infra.auth.keys import Role, authenticate, token_hash
from infra.db.session import UnitOfWork

COOKIE = "checkout_console"
LIFETIME = timedelta(hours=8)

_OPEN = (
    "INSERT INTO console_sessions (session_hash, key_id, csrf_token, expires_at) "
    "VALUES (%s, %s, %s, now() + %s) RETURNING expires_at"
)
_FIND = (
    "SELECT k.key_id, k.name, s.csrf_token, s.expires_at FROM console_sessions s "
    "JOIN api_keys k ON k.key_id = s.key_id "
    "WHERE s.session_hash = %s AND s.expires_at > now() "
    "AND k.revoked_at IS NULL AND k.role = %s"
)
_END = "DELETE FROM console_sessions WHERE session_hash = %s"
# Expired sessions are removed when someone signs in: the table stays small.
_SWEEP = "DELETE FROM console_sessions WHERE expires_at < now() - interval '1 day'"


@dataclass(frozen=True)
class Session:
    """A live session: whose key, and the token its forms must carry."""

    key_id: uuid.UUID
    key_name: str
    csrf_token: str
    expires_at: datetime


@dataclass(frozen=True)
class Opened:
    """A session just opened: the cookie's value is known only now."""

    token: str
    session: Session


class SignInRefused(Exception):
    """The key given at sign-in does not open a session; the message says why."""


async def open_session(uow: UnitOfWork, api_key: str) -> Opened:
    """A new session for a live operator key; `SignInRefused` otherwise."""
    api_key = api_key.strip()
    if not api_key or len(api_key) > 200 or not api_key.isascii():
        raise SignInRefused("that is not an API key")
    token = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(32)
    async with uow.transaction() as conn:
        key = await authenticate(conn, api_key)
        if key is None:
            raise SignInRefused("the API key is unknown or revoked")
        if key.role is not Role.operator:
            raise SignInRefused(
                f"the key {key.name!r} is a {key.role} key; the console needs an operator key"
            )
        await conn.execute(_SWEEP)
        opened = await conn.execute(_OPEN, (token_hash(token), key.key_id, csrf, LIFETIME))
        row = await opened.fetchone()
        await conn.commit()
    assert row is not None
    return Opened(token, Session(key.key_id, key.name, csrf, row[0]))


async def find_session(uow: UnitOfWork, token: str | None) -> Session | None:
    """The live session of this cookie value, or None."""
    if not token or len(token) > 100:
        return None
    async with uow.reads() as conn:
        row = await (await conn.execute(_FIND, (token_hash(token), Role.operator.value))).fetchone()
    return None if row is None else Session(row[0], row[1], row[2], row[3])


async def end_session(uow: UnitOfWork, token: str) -> None:
    """Sign out: the session is gone for every API process."""
    async with uow.transaction() as conn:
        await conn.execute(_END, (token_hash(token),))
        await conn.commit()


def same_token(given: str | None, expected: str) -> bool:
    """Constant-time comparison of a form's CSRF token with the session's."""
    return given is not None and secrets.compare_digest(given.encode(), expected.encode())
