"""What every `checkout` command shares about output: tables on a terminal, JSON on a pipe.

Consoles are built per call, not at import, so that they see the stdout in force when
they print (typer's test runner swaps it) and detect the terminal at that moment.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import typer
from rich.console import Console

from infra.settings import Settings, SettingsError, load_settings


def is_terminal() -> bool:
    """True when stdout is a terminal (a person reading), False on a pipe or file."""
    return sys.stdout.isatty()


def console() -> Console:
    """A rich console on stdout, for tables and live views."""
    return Console(highlight=False)


def err_console() -> Console:
    """A rich console on stderr, for messages that must not mix into JSON output."""
    return Console(stderr=True, highlight=False)


def print_json(obj: Any) -> None:
    """Write `obj` as one JSON document on stdout (decimals, UUIDs and times as strings)."""
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
    sys.stdout.flush()


def fail(message: str, code: int = 1) -> NoReturn:
    """Print `error: message` as one line on stderr and leave with `code`."""
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    raise typer.Exit(code)


def settings_or_exit() -> Settings:
    """Load the settings; a bad one ends the command with one line naming the variable."""
    try:
        return load_settings()
    except SettingsError as exc:
        fail(str(exc))


@contextmanager
def quiet_loggers(*names: str) -> Iterator[None]:
    """Silence these loggers for the block (client libraries' noise under a CLI command)."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
