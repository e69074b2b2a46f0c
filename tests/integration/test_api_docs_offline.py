"""/docs and /redoc name no other host: their assets are served by the API itself.

(tests/e2e/test_console.py renders both in Chromium with every other host cut off.)
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest

from checkout_api.app import create_app
from checkout_api.testing import running
from infra.settings import Settings

pytestmark = pytest.mark.integration

URL = re.compile(r"""(?:https?:)?//[^\s"'<>)]+""")


@pytest.fixture
async def anonymous(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with running(create_app(settings)) as client:
        yield client


@pytest.mark.parametrize("page", ["/docs", "/redoc", "/docs/oauth2-redirect"])
async def test_the_documentation_pages_reference_no_other_host(
    anonymous: httpx.AsyncClient, page: str
) -> None:
    response = await anonymous.get(page)

    assert response.status_code == 200
    assert URL.findall(response.text) == []
    assets = re.findall(r'(?:src|href)="([^"]+)"', response.text)
    if page != "/docs/oauth2-redirect":  # a script inline, nothing to load
        assert assets, "the page loads no script or style: the loop below checks nothing"
    for asset in assets:
        assert asset.startswith("/"), asset
        assert (await anonymous.get(asset)).status_code == 200, asset


async def test_redoc_is_served_without_its_cdn_logo(anonymous: httpx.AsyncClient) -> None:
    script = await anonymous.get("/docs-assets/redoc.standalone.js")

    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert b"cdn.redoc.ly" not in script.content
    assert b"data:image/svg+xml" in script.content
