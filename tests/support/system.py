"""A running system started as a user would (`checkout up`), for end-to-end tests."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from infra.settings import Settings


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
