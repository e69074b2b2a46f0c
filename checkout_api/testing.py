"""Drive the app in-process, lifespan included, for tests and benchmarks.

httpx's ASGITransport does not run the lifespan; `api_client` runs it and hands each
request a copy of its state, as an ASGI server does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from checkout_api.app import create_app
from infra.settings import Settings


@asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client for `app` while its lifespan runs."""
    async with app.router.lifespan_context(app) as state:

        async def with_state(scope: Scope, receive: Receive, send: Send) -> None:
            scope["state"] = dict(state or {})
            await app(scope, receive, send)

        transport = httpx.ASGITransport(app=with_state)
        async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
            yield client


@asynccontextmanager
async def api_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A client for a new app built from `settings`."""
    async with running(create_app(settings)) as client:
        yield client
