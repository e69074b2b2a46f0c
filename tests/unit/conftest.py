"""Fixtures for the unit tests: the simulated services called in process."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from infra.settings import load_settings
from mock_services.app import DEFAULT_SLOW_RESPONSE_SECONDS, create_app
from tests.support.servers import in_process


@pytest.fixture
def slow_response_seconds() -> float:
    """How long the simulated services take over a slow amount; a module overrides it."""
    return DEFAULT_SLOW_RESPONSE_SECONDS


@pytest.fixture
async def mocks(slow_response_seconds: float) -> AsyncIterator[httpx.AsyncClient]:
    """The simulated services in process, without random failures or added latency."""
    app = create_app(
        load_settings(mock_failure_rate=0.0, mock_latency_ms=0),
        slow_response_seconds=slow_response_seconds,
    )
    async with in_process(app) as client:
        yield client
