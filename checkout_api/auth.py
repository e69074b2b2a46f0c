"""Who may call what: bearer API keys, roles per route, and a rate limit per key.

A plain ASGI middleware, outside the body limit and the routes, so a caller without a
valid key learns nothing and makes the API read no body:

- a public route (health, metrics, the documents) passes untouched;
- no `Authorization: Bearer <token>`, or a token that is not a live key: 401 with
  `WWW-Authenticate: Bearer` (RFC 6750);
- a live key whose role does not reach the route's: 403;
- a key over its rate limit: 429 with `Retry-After` (seconds);
- the database unreachable while checking the key: 503 with `Retry-After`.

The key is read from the database on every request (one row by its hash), so a
revoked key is refused at once by every API process. The rate limit is a sliding
window per key and per API process (`CHECKOUT_API_RATE_LIMIT`); with N processes
behind a balancer a key gets up to N times the limit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from enum import StrEnum

import psycopg
import structlog
from limits import RateLimitItem
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from sqlalchemy.exc import DBAPIError
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

from checkout_api.errors import problem, problem_type
from infra.auth.keys import ApiKey, KeyChecker, Role

log = structlog.get_logger("checkout_api.auth")

REALM = 'Bearer realm="checkout"'
_MAX_TOKEN_LENGTH = 200  # ours are 46 characters; anything far longer is not worth a lookup


class Access(StrEnum):
    """What a route asks of its caller."""

    public = "public"
    clerk = "clerk"
    operator = "operator"

    @property
    def role(self) -> Role | None:
        return None if self is Access.public else Role(self.value)


AccessFor = Callable[[Scope], Access]


def route_access(routes: Iterable[tuple[BaseRoute, Access]], default: Access) -> AccessFor:
    """`scope -> Access` by the first route whose path matches (any method: a 405 on a
    protected path is still protected); `default` for paths no route serves."""
    table = list(routes)

    def access_for(scope: Scope) -> Access:
        for route, access in table:
            match, _ = route.matches(scope)
            if match is not Match.NONE:
                return access
        return default

    return access_for


def _bearer_token(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = bytes(value).decode("latin-1").strip().partition(" ")
            if scheme.lower() != "bearer":
                return None
            return token.strip() or None
    return None


class AuthMiddleware:
    """Authenticates, authorizes and rate-limits every request to a protected route."""

    def __init__(self, app: ASGIApp, access_for: AccessFor, limits: list[RateLimitItem]) -> None:
        self.app = app
        self.access_for = access_for
        self.limits = limits
        self.limiter = SlidingWindowCounterRateLimiter(MemoryStorage())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        needed = self.access_for(scope).role
        if needed is None:
            await self.app(scope, receive, send)
            return

        token = _bearer_token(scope)
        if token is None:
            await self._unauthenticated(
                scope,
                receive,
                send,
                "send the header Authorization: Bearer <API key>; `checkout apikey create` "
                "makes a key, and `make run` keeps a development key in .checkout/dev-api-key",
                None,
            )
            return
        try:
            key = await self._lookup(scope, token)
        except (psycopg.Error, DBAPIError, OSError) as exc:
            log.warning("cannot check an API key: database unreachable", error=repr(exc))
            response = problem(
                503,
                "cannot check the API key now: the database is unreachable; retry shortly",
                type_=problem_type("auth-unavailable"),
                title="Authentication unavailable",
                headers={"Retry-After": "5"},
            )
            await response(scope, receive, send)
            return
        if key is None:
            await self._unauthenticated(
                scope,
                receive,
                send,
                "the API key is unknown or revoked; `checkout apikey create` makes a new one",
                "invalid_token",
            )
            return

        structlog.contextvars.bind_contextvars(api_key=key.name)
        if not key.role.allows(needed):
            response = problem(
                403,
                f"this needs the {needed.value} role; the key {key.name!r} is a {key.role.value}",
                type_=problem_type("forbidden"),
                title="Forbidden",
            )
            await response(scope, receive, send)
            return
        retry_after = await self._over_limit(key)
        if retry_after is not None:
            response = problem(
                429,
                f"the API key {key.name!r} is over its rate limit; retry in {retry_after} s",
                type_=problem_type("rate-limited"),
                title="Too many requests",
                headers={"Retry-After": str(retry_after)},
            )
            await response(scope, receive, send)
            return
        scope["api_key"] = key
        await self.app(scope, receive, send)

    async def _lookup(self, scope: Scope, token: str) -> ApiKey | None:
        if len(token) > _MAX_TOKEN_LENGTH or not token.isascii():
            return None
        keys: KeyChecker = scope["state"]["keys"]
        return await keys.authenticate(token)

    async def _over_limit(self, key: ApiKey) -> int | None:
        """None if the request may go on, else whole seconds until it may."""
        identity = str(key.key_id)
        for item in self.limits:
            if not await self.limiter.hit(item, identity):
                stats = await self.limiter.get_window_stats(item, identity)
                return max(1, math.ceil(stats.reset_time - time.time()))
        return None

    @staticmethod
    async def _unauthenticated(
        scope: Scope, receive: Receive, send: Send, detail: str, error: str | None
    ) -> None:
        challenge = REALM if error is None else f'{REALM}, error="{error}"'
        response = problem(
            401,
            detail,
            type_=problem_type("unauthenticated"),
            title="Unauthenticated",
            headers={"WWW-Authenticate": challenge},
        )
        await response(scope, receive, send)
