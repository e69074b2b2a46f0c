"""Serve an ASGI app on a free loopback port inside the test's event loop, or call it in
process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import uvicorn
from starlette.types import ASGIApp

from infra.localports import free_port
from tests.support.polling import eventually


def in_process(app: ASGIApp) -> httpx.AsyncClient:
    """A client calling `app` in process (no socket), its base URL http://mocks."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://mocks")


@asynccontextmanager
async def serving(app: ASGIApp) -> AsyncIterator[str]:
    """Yield the base URL while uvicorn serves `app`; stop it afterwards."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on")
    )
    task = asyncio.create_task(server.serve())

    async def started() -> bool:
        if task.done():
            task.result()
        return server.started

    await eventually(started, what="uvicorn start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
