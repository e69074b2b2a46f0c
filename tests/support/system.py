"""A running system started as a user would (`checkout up`), for end-to-end tests."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from infra.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class System:
    process: subprocess.Popen[bytes]
    env: dict[str, str]
    api: str
    mocks: str
    log: Path
    settings: Settings

    @property
    def auth(self) -> dict[str, str]:
        """The development key `checkout up` made (and wrote to CHECKOUT_DEV_KEY_FILE)."""
        token = Path(self.env["CHECKOUT_DEV_KEY_FILE"]).read_text().strip()
        return {"Authorization": f"Bearer {token}"}

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-20000:]


async def run_cli(system: System, *args: str, actor: str = "ops-e2e") -> tuple[int, str, str]:
    """Run `checkout ARGS` as an operator would, from the repository's root, as `actor`;
    (exit code, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "infra.cli",
        *args,
        env={**system.env, "CHECKOUT_ACTOR": actor},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def cli(system: System, *args: str, actor: str = "ops-e2e") -> tuple[int, Any]:
    """Run `checkout ARGS` as an operator would; stdout is a pipe, so it prints JSON:
    (exit code, the document printed, None if nothing was)."""
    code, stdout, stderr = await run_cli(system, *args, actor=actor)
    if code != 0 and not stdout.strip():  # say why, not "None is not ..."
        raise AssertionError(f"checkout {' '.join(args)} exited {code}: {stderr[-2000:]}")
    try:
        return code, json.loads(stdout) if stdout.strip() else None
    except json.JSONDecodeError:
        raise AssertionError(f"not JSON: {stdout!r} {stderr!r}") from None


async def _switch(client: httpx.AsyncClient, url: str, down: bool) -> None:
    response = await client.post(url, json={"down": down})
    assert response.status_code < 300, f"{url} answered {response.status_code}"


@asynccontextmanager
async def outage(
    client: httpx.AsyncClient, service: str, *, mocks: str = ""
) -> AsyncIterator[None]:
    """The simulated `service` (payments, emails, production) down inside the block, up
    again after it whatever happens. `mocks`: the simulated services' URL, unless it is
    the client's base URL."""
    url = f"{mocks}/mock/{service}/outage"
    await _switch(client, url, True)
    try:
        yield
    finally:
        await _switch(client, url, False)
