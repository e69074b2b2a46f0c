"""`checkout stuck [--older-than 5m] [--json]`: what is not final for too long, and why.

Reads the database and the dead-letter queues (messages stay where they are; a broker
that does not answer does not fail the command: the report says the queues were not
read). A table on a terminal, one JSON document on a pipe or with `--json`. Exit 0
when nothing is stuck, 1 when something is (or the database cannot be read), 2 on bad
usage. Register it with `app.command()(stuck)`.
"""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta
from typing import Annotated

import sqlalchemy.exc
import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy import text

from infra.cli.output import console, fail, is_terminal, print_json, settings_or_exit
from infra.cli.supervisor import known_health_ports
from infra.db.session import create_engine
from infra.messaging.topology import Topology
from infra.settings import Settings
from operations.cli.trace import _rabbit
from operations.stuck import (
    DEFAULT_OLDER_THAN,
    Report,
    attach_breakers,
    attach_dead_letters,
    find_stuck,
    finish,
    open_breakers,
    set_gauge,
)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(value: str) -> timedelta:
    """`90s`, `5m`, `2h`, `1d` or plain seconds; ValueError otherwise."""
    match = _DURATION.match(value)
    if match is None:
        raise ValueError(f"{value!r} is not a duration such as 90s, 5m, 2h or 1d")
    return timedelta(seconds=float(match.group(1)) * _UNIT[match.group(2)])


def stuck(
    older_than: Annotated[
        str,
        typer.Option(
            "--older-than", help="Not final for longer than this: 90s, 5m, 2h, 1d.", metavar="TIME"
        ),
    ] = "5m",
    json_: Annotated[
        bool,
        typer.Option("--json", help="One JSON document on stdout (also the default on a pipe)."),
    ] = False,
) -> None:
    """Every checkout and cancellation not final for too long: what it waits for (a
    deadline, a dead letter, an unpublished message, a service) and how to repair it."""
    try:
        threshold = parse_duration(older_than)
    except ValueError as exc:
        fail(str(exc), 2)
    settings = settings_or_exit()
    try:
        report = asyncio.run(build_report(settings, threshold))
    except sqlalchemy.exc.ProgrammingError as exc:
        if type(getattr(exc, "orig", None)).__name__ == "UndefinedTable":
            fail("the database is not migrated to this version: run `checkout migrate`")
        raise
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError, OSError) as exc:
        from infra.cli.supervisor import database_error

        fail(str(database_error(settings, exc)))
    if json_ or not is_terminal():
        print_json(report.as_json())
    else:
        print_report(report, console())
    raise typer.Exit(1 if report.stuck else 0)


async def build_report(settings: Settings, older_than: timedelta = DEFAULT_OLDER_THAN) -> Report:
    """Find what is stuck (database, then dead-letter queues) and set the gauge."""
    engine = create_engine(settings, pool_size=1)
    try:
        async with engine.connect() as conn:
            now = (await conn.execute(text("SELECT now()"))).scalar_one()
            found = await find_stuck(conn, now, older_than)
    finally:
        await engine.dispose()
    report = Report(now, older_than, found)
    async with _rabbit(settings, bool(found)) as (rabbit, error):
        if rabbit is not None:
            await attach_dead_letters(found, rabbit, Topology.from_settings(settings))
            report.dead_letters_read = True
        report.broker_error = error
    port = known_health_ports(settings).get("saga")
    if found and port:
        url = f"http://{settings.health_host}:{port}/metrics"
        open_ = await open_breakers(url)
        if open_:
            attach_breakers(found, open_, url)
    finish(found)
    counts: dict[tuple[str, str], int] = {}
    for item in found:
        counts[item.kind, item.state] = counts.get((item.kind, item.state), 0) + 1
    set_gauge(counts)
    return report


def print_report(report: Report, out: Console) -> None:
    """The report as a table (one row per thing waited for)."""
    minutes = report.older_than.total_seconds() / 60
    if not report.stuck:
        out.print(
            f"Nothing is stuck: every checkout and cancellation older than {minutes:g} min"
            " is final."
        )
        return
    table = Table(title=f"Not final for more than {minutes:g} min: {len(report.stuck)}")
    for column in ("kind", "id", "state", "for", "waiting for", "repair"):
        table.add_column(column, overflow="fold")
    for item in report.stuck:
        for n, wait in enumerate(item.waiting):
            first = n == 0
            table.add_row(
                item.kind if first else "",
                str(item.id) if first else "",
                item.state if first else "",
                _age(item.age.total_seconds()) if first else "",
                f"{wait.what}: {wait.detail}",
                wait.repair or "-",
            )
    out.print(table)
    if report.broker_error:
        out.print(f"[yellow]dead-letter queues not read: {report.broker_error}[/]")


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
