"""Which health port each worker of `checkout up` serves on, and where that is written down.

`checkout up` (`infra.cli.supervisor`) chooses the ports and writes them beside the dev
key; commands that ask a running part, such as `checkout stuck` the saga's breakers, and
the console read them here, without the supervisor.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from infra.settings import Settings

CONSUMERS = ("invoice", "email", "production")
# The parts with a health and metrics endpoint of their own (`infra.health`).
WORKERS = ("relay", "saga", *CONSUMERS)


def port_series(base: int) -> dict[str, int]:
    """`CHECKOUT_HEALTH_PORT`'s series: one port each from `base` on, in `WORKERS` order."""
    return {name: base + i for i, name in enumerate(WORKERS)}


def health_ports_file(settings: Settings) -> Path:
    """Where `checkout up` writes the health port it gave each worker (beside the dev key),
    for commands that ask a running part, such as `checkout stuck` the saga's breakers."""
    return settings.dev_key_file.parent / "health-ports.json"


def write_health_ports(settings: Settings, ports: Mapping[str, int]) -> None:
    path = health_ports_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(ports)) + "\n")


def known_health_ports(settings: Settings) -> dict[str, int]:
    """Each worker's health port: `CHECKOUT_HEALTH_PORT`'s series when it is set, else what
    the running `checkout up` wrote; empty when neither says."""
    if settings.health_port:
        return port_series(settings.health_port)
    try:
        written = json.loads(health_ports_file(settings).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(written, dict):
        return {}
    return {str(k): int(v) for k, v in written.items() if isinstance(v, int)}
