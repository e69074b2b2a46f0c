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

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-20000:]
