"""API keys: created, listed and revoked by `checkout apikey`, checked on every API request.

A key is a bearer token, `ck_` followed by 43 URL-safe characters (256 random bits),
printed once when it is created. Only the SHA-256 of the token is stored: with that
much entropy a slow password hash would protect nothing more and cost every request
CPU. The lookup is by that hash, so no token is ever compared character by
character. Revoking sets `revoked_at`; the API reads the key on every request (one
indexed row), so a revoked key stops working at once, in every API process.

Roles: a `clerk` may create, search and check out orders; an `operator` may do all of
that and use the operator endpoints (a checkout's timeline).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import psycopg
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from infra.db.batching import Batcher
from infra.db.session import UnitOfWork, psycopg_connection

TOKEN_PREFIX = "ck_"  # noqa: S105 -- the marker every token starts with, not a secret
# "ck_" and 7 characters: enough to tell keys apart, useless to an attacker (_REVOKE
# relies on this length too).
_PREFIX_SHOWN = 10


class Role(StrEnum):
    clerk = "clerk"
    operator = "operator"

    def allows(self, needed: Role) -> bool:
        """An operator may do everything a clerk may."""
        return self is Role.operator or needed is Role.clerk


@dataclass(frozen=True)
class ApiKey:
    """A stored key, without its token."""

    key_id: uuid.UUID
    name: str
    role: Role
    token_prefix: str
    created_at: datetime
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True)
class NewKey:
    """A key just created: the only moment its token is known."""

    key: ApiKey
    token: str


class ApiKeyError(Exception):
    """A key cannot be created or revoked; the message says why and what to do."""


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


def valid_name(name: str) -> bool:
    """Whether `name` may name a key: 1-64 letters, digits and . _ @ -, starting with a
    letter or digit (the command and the console each say so in their own words)."""
    return _NAME.fullmatch(name) is not None


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _row_to_key(row: object) -> ApiKey:
    m = row._mapping  # type: ignore[attr-defined]
    return ApiKey(
        key_id=m["key_id"],
        name=m["name"],
        role=Role(m["role"]),
        token_prefix=m["token_prefix"],
        created_at=m["created_at"],
        revoked_at=m["revoked_at"],
    )


_INSERT = text(
    "INSERT INTO api_keys (key_id, name, role, token_hash, token_prefix) "
    "VALUES (:key_id, :name, :role, :hash, :prefix) "
    "RETURNING key_id, name, role, token_prefix, created_at, revoked_at"
)
_LIST_LIVE = text(
    "SELECT key_id, name, role, token_prefix, created_at, revoked_at FROM api_keys "
    "WHERE revoked_at IS NULL ORDER BY created_at, name"
)
_LIST_ALL = text(
    "SELECT key_id, name, role, token_prefix, created_at, revoked_at FROM api_keys "
    "ORDER BY created_at, name"
)
# By name, id, or the shown start of the token (at least the full shown prefix).
_REVOKE = text(
    "UPDATE api_keys SET revoked_at = now() "
    "WHERE revoked_at IS NULL AND (name = :name OR key_id = :key_id "
    "OR (length(:name) >= 10 AND token_prefix = :name)) "
    "RETURNING key_id, name, role, token_prefix, created_at, revoked_at"
)
# Plain psycopg (`%s`): it runs on every API request.
_AUTHENTICATE = (
    "SELECT key_id, name, role, token_prefix, created_at, revoked_at FROM api_keys "
    "WHERE token_hash = %s AND revoked_at IS NULL"
)
_AUTHENTICATE_MANY = (
    "SELECT token_hash, key_id, name, role, token_prefix, created_at, revoked_at FROM api_keys "
    "WHERE token_hash = ANY(%s) AND revoked_at IS NULL"
)


async def create_key(
    engine: AsyncEngine, name: str, role: Role, *, token: str | None = None
) -> NewKey:
    """Store a new key named `name`; `token` chooses its value (else a random one)."""
    token = token or new_token()
    try:
        async with engine.begin() as conn:
            row = (
                await conn.execute(
                    _INSERT,
                    {
                        "key_id": uuid.uuid4(),
                        "name": name,
                        "role": role.value,
                        "hash": token_hash(token),
                        "prefix": token[:_PREFIX_SHOWN],
                    },
                )
            ).one()
    except IntegrityError as exc:
        if "api_keys_live_name_idx" in str(exc.orig):
            raise ApiKeyError(
                f"a live key named {name!r} exists; revoke it first "
                f"(checkout apikey revoke {name}) or choose another name"
            ) from None
        raise ApiKeyError("that token is already a key; choose another") from None
    return NewKey(_row_to_key(row), token)


async def list_keys(engine: AsyncEngine, *, include_revoked: bool = False) -> list[ApiKey]:
    async with engine.connect() as conn:
        rows = await conn.execute(_LIST_ALL if include_revoked else _LIST_LIVE)
        return [_row_to_key(row) for row in rows]


async def revoke_key(engine: AsyncEngine, name_or_id: str) -> ApiKey:
    """Revoke the live key with this name (or id, or token prefix); it stops working at once."""
    try:
        key_id: uuid.UUID | None = uuid.UUID(name_or_id)
    except ValueError:
        key_id = None
    async with engine.begin() as conn:
        rows = (
            await conn.execute(
                _REVOKE,
                {"name": name_or_id, "key_id": key_id},
            )
        ).all()
        if len(rows) > 1:
            await conn.rollback()
            raise ApiKeyError(f"{name_or_id!r} matches {len(rows)} keys; give the key's id")
    if not rows:
        raise ApiKeyError(
            f"no live key named {name_or_id!r}; `checkout apikey list` shows the live keys"
        )
    return _row_to_key(rows[0])


async def authenticate(conn: psycopg.AsyncConnection[Any], token: str) -> ApiKey | None:
    """The live key this token belongs to, or None (one indexed row, read on every request)."""
    found = await (await conn.execute(_AUTHENTICATE, (token_hash(token),))).fetchone()
    if found is None:
        return None
    key_id, name, role, prefix, created_at, revoked_at = found
    return ApiKey(key_id, name, Role(role), prefix, created_at, revoked_at)


class KeyChecker:
    """Finds the live key of each request's token, reading the database every time.

    The lookups of the requests in hand at one moment share one read (group commit,
    `infra.db.batching`): the first goes at once, those arriving meanwhile together
    after it. A request is looked up by a statement sent after it arrived, so a key
    revoked before a request is refused on that request, as with one read each.
    """

    def __init__(self, uow: UnitOfWork) -> None:
        self._uow = uow
        self._lookups: Batcher[str, ApiKey | None] = Batcher("api key lookups", self._find_all)

    async def authenticate(self, token: str) -> ApiKey | None:
        """The live key this token belongs to, or None."""
        return await self._lookups.submit(token_hash(token))

    async def _find_all(self, hashes: Sequence[str]) -> list[ApiKey | None]:
        async with self._uow.reads() as conn:
            cursor = await conn.execute(_AUTHENTICATE_MANY, (sorted(set(hashes)),))
            found = {
                row[0]: ApiKey(row[1], row[2], Role(row[3]), row[4], row[5], row[6])
                for row in await cursor.fetchall()
            }
        return [found.get(h) for h in hashes]


async def key_is_live(engine: AsyncEngine, token: str) -> bool:
    async with engine.connect() as conn:
        return await authenticate(await psycopg_connection(conn), token) is not None
