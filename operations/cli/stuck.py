"""`checkout stuck [--older-than 5m] [--json]`: what is not final for too long, and why.

Reads the database and the dead-letter queues (messages stay where they are; a broker
that does not answer does not fail the command: the report says the queues were not
read). A table on a terminal, one JSON document on a pipe or with `--json`. Exit 0
when nothing is stuck, 1 when something is (or the database cannot be read), 2 on bad
usage. Register it with `app.command()(stuck)`.
"""

from __future__ import annotations

import asyncio
import textwrap
from datetime import timedelta
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from infra.cli.output import console, fail, is_terminal, print_json, settings_or_exit
from infra.db.session import create_engine
from infra.messaging.topology import Topology
from infra.settings import Settings
from operations.cli.common import JsonOpt, database_or_exit, tolerant_broker
from operations.stuck import (
    DEFAULT_OLDER_THAN,
    Report,
    parse_duration,
    saga_metrics_url,
    set_gauge,
    stuck_report,
)


def stuck(
    older_than: Annotated[
        str,
        typer.Option(
            "--older-than", help="Not final for longer than this: 90s, 5m, 2h, 1d.", metavar="TIME"
        ),
    ] = "5m",
    json_: JsonOpt = False,
) -> None:
    """Every checkout and cancellation not final for too long: what it waits for (a
    deadline, a dead letter, an unpublished message, a service) and how to repair it."""
    try:
        threshold = parse_duration(older_than)
    except ValueError as exc:
        fail(str(exc), 2)
    settings = settings_or_exit()
    with database_or_exit(settings):
        report = asyncio.run(build_report(settings, threshold))
    if json_ or not is_terminal():
        print_json(report.as_json())
    else:
        print_report(report, console())
    raise typer.Exit(1 if report.stuck else 0)


async def build_report(settings: Settings, older_than: timedelta = DEFAULT_OLDER_THAN) -> Report:
    """Find what is stuck (database, then dead-letter queues) and set the gauge."""
    engine = create_engine(settings, pool_size=1)
    try:
        report = await stuck_report(
            engine,
            older_than,
            lambda wanted: tolerant_broker(settings, wanted, "stuck-cli"),
            Topology.from_settings(settings),
            saga_metrics_url(settings),
        )
    finally:
        await engine.dispose()
    counts: dict[tuple[str, str], int] = {}
    for item in report.stuck:
        counts[item.kind, item.state] = counts.get((item.kind, item.state), 0) + 1
    set_gauge(counts)
    return report


_DETAIL_LINES = 3
"""Lines of a waited-for thing's detail on a terminal (`--json` has it whole)."""


def print_report(report: Report, out: Console) -> None:
    """The report for a person: one block per stuck checkout or cancellation, each thing it
    waits for on a line of its own (cut to the terminal's width; `--json` has it whole),
    and each repair as a whole line that can be copied as it is."""
    threshold = _age(report.older_than.total_seconds())
    if not report.stuck:
        out.print(
            f"[green]Nothing is stuck:[/] every checkout and cancellation older than {threshold}"
            " is final."
        )
        return
    out.print(f"[bold red]{len(report.stuck)} not final for more than {threshold}[/]")
    width = max(out.width - 13, 40)
    for item in report.stuck:
        out.print()
        out.print(
            f"[bold]{item.kind} {item.id}[/]  {item.state}  for {_age(item.age.total_seconds())}",
            highlight=False,
        )
        for wait in item.waiting:
            lines = textwrap.wrap(f"{wait.what}: {wait.detail}", width) or [""]
            if len(lines) > _DETAIL_LINES:
                lines = [*lines[: _DETAIL_LINES - 1], lines[_DETAIL_LINES - 1][: width - 1] + "…"]
            for n, line in enumerate(lines):
                lead = "  waits for  " if n == 0 else " " * 13
                out.print(lead + escape(line), highlight=False, soft_wrap=True)
            if wait.repair:
                out.print(f"  [cyan]repair[/]     {escape(wait.repair)}", soft_wrap=True)
    if report.broker_error:
        out.print(f"[yellow]dead-letter queues not read: {escape(report.broker_error)}[/]")


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
