"""The development key: what `checkout up` (so `make run`) creates on first start.

The newcomer's path must not get harder with authentication: the first `checkout up`
creates an operator key named `development`, writes its token to `dev_key_file`
(`.checkout/dev-api-key`, readable by its owner only, ignored by git) and prints it;
later starts reuse it while it is live in this database. `checkout demo` reads it from
there. A production deployment never runs `checkout up`, so never gets such a key.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from infra.auth.keys import ApiKeyError, Role, create_key, key_is_live, revoke_key

DEV_KEY_NAME = "development"


@dataclass(frozen=True)
class DevKey:
    token: str
    path: Path
    created: bool


def read_key_file(path: Path) -> str | None:
    """The token in `path`, or None if there is no such file (or it is empty)."""
    try:
        token = path.read_text().strip()
    except (FileNotFoundError, IsADirectoryError):
        return None
    return token or None


def _write_private(path: Path, token: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(token + "\n")
    os.chmod(path, 0o600)  # an older file may have had wider rights


async def ensure_dev_key(engine: AsyncEngine, path: Path) -> DevKey:
    """The development key in `path` if it is live here, else a new one written there."""
    token = read_key_file(path)
    if token is not None and await key_is_live(engine, token):
        return DevKey(token, path, created=False)
    # The file is gone or belongs to another database: replace the live one by name.
    with contextlib.suppress(ApiKeyError):
        await revoke_key(engine, DEV_KEY_NAME)
    made = await create_key(engine, DEV_KEY_NAME, Role.operator)
    _write_private(path, made.token)
    return DevKey(made.token, path, created=True)
