"""Drive the app in-process, lifespan included, for tests and benchmarks.

httpx's ASGITransport does not run the lifespan; `running` runs it and hands each
request a copy of its state, as an ASGI server does. `api_client` also creates an API
key of the given role in the app's database and sends it with every request.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from checkout_api.app import create_app
from infra.auth.keys import Role, create_key
from infra.settings import Settings


@asynccontextmanager
async def running(app: FastAPI, role: Role | None = None) -> AsyncIterator[httpx.AsyncClient]:
    """A client for `app` while its lifespan runs; with `role`, it carries a new key."""
    async with app.router.lifespan_context(app) as state:

        async def with_state(scope: Scope, receive: Receive, send: Send) -> None:
            scope["state"] = dict(state or {})
            await app(scope, receive, send)

        headers = {}
        if role is not None:
            engine = dict(state or {})["uow"].engine
            made = await create_key(engine, f"test-{role.value}-{uuid.uuid4().hex[:8]}", role)
            headers["Authorization"] = f"Bearer {made.token}"
        transport = httpx.ASGITransport(app=with_state)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://api.test", headers=headers
        ) as client:
            yield client


@asynccontextmanager
async def api_client(
    settings: Settings, role: Role | None = Role.operator
) -> AsyncIterator[httpx.AsyncClient]:
    """A client for a new app built from `settings`, sending a new key of `role`
    (None: no key, for an app whose database is not there)."""
    async with running(create_app(settings), role) as client:
        yield client
