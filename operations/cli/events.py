"""`checkout events ...`: read the event log, and backfill one queue from it.

A thin shell around `operations.events`: it checks the usage, connects, runs one async
function and prints the result: a table on a terminal, one JSON document on a pipe or
with `--json`; a progress line on stderr while a long range is read, when stderr is a
terminal. Errors are one line on stderr: exit 1 when something is down, missing or
stopped (saying what to do), 2 for bad usage (saying what would be right). Register it
with `app.add_typer(events_app, name="events")`.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Annotated, Any

import rich.box
import rich.progress
import typer
from rich.table import Table
from rich.text import Text

from infra.cli.output import (
    console,
    err_console,
    fail,
    is_terminal,
    print_json,
    settings_or_exit,
)
from infra.messaging.topology import Topology
from infra.settings import Settings
from operations.cli.common import (
    JsonOpt,
    audit_log,
    audit_problem,
    broker,
    current_actor,
    run,
    undeclared,
    when,
)
from operations.dlq.errors import AuditUnavailable
from operations.events.backfill import BackfillOutcome
from operations.events.errors import (
    BackfillNotRecorded,
    BackfillStopped,
    BadTarget,
    LogLost,
    LogNotDeclared,
    QueueMissing,
)
from operations.events.event import LoggedEvent
from operations.events.listing import Listing, list_events
from operations.events.operations import backfill_recorded
from operations.events.selection import EventSelection
from operations.events.targets import not_for_events
from operations.events.times import BadTime, parse_time

CLIENT_NAME = "events-cli"  # the broker connection's name, after the namespace

events_app = typer.Typer(
    name="events",
    help="The event log ({ns}.orders.log): list events, backfill a queue from it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _time_option(help: str) -> Any:
    """An optional `TIME` (`parse_time`'s: RFC 3339, or a duration ago)."""
    return typer.Option(metavar="TIME", help=help, show_default=False)


SinceOpt = Annotated[
    str | None,
    _time_option(
        "From this time: RFC 3339 (2026-12-04T10:00:00Z) or a duration ago (2h, 30m, 7d)."
    ),
]
UntilOpt = Annotated[
    str | None, _time_option("Up to this time (default: the log's end when the command starts).")
]
TypeOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--type",
        metavar="T...",
        help="Only events of this type (OrderPaid) or routing key (order.paid); repeat it, "
        "or give several after it.",
        show_default=False,
    ),
]


# --------------------------------------------------------------------------- commands


@events_app.command("list", context_settings={"allow_extra_args": True})
def list_(
    ctx: typer.Context,
    since: SinceOpt = None,
    until: UntilOpt = None,
    types: TypeOpt = None,
    order: Annotated[
        str | None, typer.Option(metavar="ID", help="Only this order's events.", show_default=False)
    ] = None,
    json_: JsonOpt = False,
) -> None:
    """The events of the log, oldest first; nothing is consumed."""
    settings = settings_or_exit()
    started = datetime.now(UTC)
    selection = _selection_or_exit(since, until, types, ctx.args, started, order=order)
    stream = Topology.from_settings(settings).event_log

    async def main() -> Listing:
        async with broker(settings, CLIENT_NAME) as connection:
            with _progress(selection, "Reading") as progress:
                return await list_events(
                    connection, stream, selection, started=started, on_progress=progress
                )

    listing = run(settings, main(), _errors(settings))
    if json_ or not is_terminal():
        print_json([event.as_json() for event in listing.events])
    else:
        console().print(events_table(listing.events, _title(listing)))


@events_app.command(context_settings={"allow_extra_args": True})
def backfill(
    ctx: typer.Context,
    to_queue: Annotated[
        str,
        typer.Option(
            "--to-queue",
            metavar="QUEUE",
            help="The one existing queue to copy into (a new subscriber's).",
            show_default=False,
        ),
    ],
    reason: Annotated[
        str,
        typer.Option(metavar="TEXT", help="Why; kept in the audit log.", show_default=False),
    ],
    since: SinceOpt = None,
    until: UntilOpt = None,
    types: TypeOpt = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would be copied; copy nothing.")
    ] = False,
    rate: Annotated[
        float | None,
        typer.Option(metavar="N", help="At most N events a second.", show_default=False),
    ] = None,
    since_offset: Annotated[
        int | None,
        typer.Option(
            metavar="N",
            help="Start at this offset of the log: to resume a backfill that stopped "
            "(its message gives the offset).",
            show_default=False,
        ),
    ] = None,
    json_: JsonOpt = False,
) -> None:
    """Copy the matching events into one existing queue, with their original ids."""
    settings = settings_or_exit()
    started = datetime.now(UTC)
    if since is None and since_offset is None:
        fail("say where to start: --since TIME (or --since-offset N to resume)", 2)
    if rate is not None and rate <= 0:
        fail("--rate must be a positive number of events a second", 2)
    if not reason.strip():
        fail("--reason must say why (it is kept in the audit log)", 2)
    selection = _selection_or_exit(since, until, types, ctx.args, started, since_offset)
    topology = Topology.from_settings(settings)
    stream = topology.event_log
    if to_queue == stream:
        fail(f"{stream} is the event log itself: --to-queue names the queue to copy into", 2)
    refused = not_for_events(topology, to_queue)
    if refused:
        fail(refused, 2)
    actor = current_actor()

    async def main() -> BackfillOutcome:
        async with broker(settings, CLIENT_NAME) as connection, audit_log(settings) as uow:
            verb = "Looking" if dry_run else "Copying"
            with _progress(selection, verb) as progress:
                return await backfill_recorded(
                    connection,
                    uow,
                    stream,
                    to_queue,
                    selection,
                    actor=actor,
                    reason=reason,
                    rate=rate,
                    dry_run=dry_run,
                    on_progress=progress,
                )

    try:
        outcome = run(settings, main(), _errors(settings))
    except BackfillStopped as exc:
        fail(_stopped(exc, reason))
    except BackfillNotRecorded as exc:
        fail(_not_recorded(settings, exc, reason))
    if json_ or not is_terminal():
        print_json(outcome.summary())
    else:
        _print_backfill(outcome)


# --------------------------------------------------------------------------- usage


def _selection_or_exit(
    since: str | None,
    until: str | None,
    types: list[str] | None,
    extra: list[str],
    now: datetime,
    since_offset: int | None = None,
    *,
    order: str | None = None,
) -> EventSelection:
    # `--type A B C`: click hands the types after the first one over as extra args.
    if extra and not types:
        fail(f"unexpected argument {extra[0]!r}; event types follow --type", 2)
    try:
        start = parse_time(since, now) if since is not None else None
    except BadTime as exc:
        fail(f"--since: {exc}", 2)
    try:
        end = parse_time(until, now) if until is not None else None
    except BadTime as exc:
        fail(f"--until: {exc}", 2)
    try:
        return EventSelection(
            since=start,
            until=end,
            types=tuple([*(types or []), *extra]),
            order_id=order.strip() if order else None,
            since_offset=since_offset,
        )
    except ValueError as exc:
        fail(str(exc), 2)


# --------------------------------------------------------------------------- errors


def _errors(settings: Settings) -> Callable[[Exception], None]:
    """The command's line for each event-log error (`run`'s `on_error`)."""

    def on_error(exc: Exception) -> None:
        if isinstance(exc, LogNotDeclared):
            fail(
                undeclared(
                    settings,
                    exc,
                    "run `checkout declare` (or start the system once with `checkout up`)",
                )
            )
        if isinstance(exc, QueueMissing):
            fail(str(exc))
        if isinstance(exc, BadTarget):
            fail(str(exc), 2)
        if isinstance(exc, LogLost):
            fail(f"{exc}; nothing was changed: run the command again when the broker is back")
        if isinstance(exc, AuditUnavailable):
            fail(_audit_failure(settings, exc))

    return on_error


def _audit_failure(settings: Settings, exc: AuditUnavailable) -> str:
    problem = audit_problem(settings, exc)
    if exc.not_migrated:
        return problem
    return f"the audit log cannot be written, so nothing was copied: {problem}"


def _copied(done: BackfillOutcome) -> str:
    if done.last_copied is None:
        return f"no event was copied to {done.queue}"
    were = "1 event was" if done.count == 1 else f"{done.count} events were"
    return (
        f"{were} copied to {done.queue}, the last at offset "
        f"{done.last_copied.offset} ({when(done.last_copied.timestamp)} UTC)"
    )


def _go_on(done: BackfillOutcome, reason: str) -> str:
    return "to go on from there: " + resume_command(done, done.resume_from, reason)


def _stopped(exc: BackfillStopped, reason: str) -> str:
    """The line for a backfill that stopped: how far it got and how to go on."""
    done = exc.outcome
    recorded = "" if done.dry_run else " (recorded in the audit log)"
    return f"the backfill stopped ({exc}): {_copied(done)}{recorded}; {_go_on(done, reason)}"


def _not_recorded(settings: Settings, exc: BackfillNotRecorded, reason: str) -> str:
    """The line for a backfill that copied events but could not write its audit entry."""
    from infra.cli.supervisor import database_error

    problem = database_error(settings, exc.cause)
    line = f"{_copied(exc.outcome)}, but the audit log was not written: {problem}"
    if exc.stopped is not None:
        line = f"the backfill stopped ({exc.stopped}): {line}; {_go_on(exc.outcome, reason)}"
    return line


def resume_command(outcome: BackfillOutcome, offset: int | None, reason: str) -> str:
    """The command that copies the rest of `outcome`'s range, and nothing twice."""
    selection = outcome.selection
    words = ["checkout", "events", "backfill", "--to-queue", outcome.queue]
    if selection.since is not None:
        words += ["--since", selection.since.isoformat()]
    if offset is not None:
        words += ["--since-offset", str(offset)]
    # The same end as the first run, not the log's end when the resumed run starts.
    words += ["--until", outcome.window.end.isoformat()]
    for kind in selection.types:
        words += ["--type", kind]
    if outcome.rate is not None:
        words += ["--rate", f"{outcome.rate:g}"]
    words += ["--reason", reason]
    return shlex.join(words)


# --------------------------------------------------------------------------- output


@contextmanager
def _progress(selection: EventSelection, verb: str) -> Iterator[Callable[[Any], None] | None]:
    """A progress bar over the time range on stderr, when stderr is a terminal."""
    if not sys.stderr.isatty():
        yield None
        return
    with rich.progress.Progress(
        rich.progress.TextColumn("{task.description}"),
        rich.progress.BarColumn(),
        rich.progress.TextColumn("{task.fields[at]}"),
        rich.progress.TimeElapsedColumn(),
        console=err_console(),
        transient=True,
    ) as bar:
        task = bar.add_task(f"{verb} the event log", total=None, at="")
        first: list[datetime] = []

        def advance(state: Listing | BackfillOutcome) -> None:
            seen = state.last_seen
            if seen is None or seen.timestamp is None:
                return
            if not first:
                first.append(selection.since or seen.timestamp)
            span = (state.window.end - first[0]).total_seconds()
            done = (seen.timestamp - first[0]).total_seconds()
            count = state.count if isinstance(state, BackfillOutcome) else len(state.events)
            bar.update(
                task,
                total=max(span, 1.0),
                completed=max(0.0, min(done, span)),
                description=f"{verb} the event log: {state.scanned} read, {count} selected",
                at=f"at {when(seen.timestamp)}",
            )

        yield advance


def _title(listing: Listing) -> str:
    selection = listing.window.selection
    start = when(selection.since) if selection.since else "the start of the log"
    noun = "event" if len(listing.events) == 1 else "events"
    return (
        f"{listing.stream}: {len(listing.events)} {noun} from {start} to "
        f"{when(listing.window.end)} (UTC)"
    )


def events_table(events: list[LoggedEvent], title: str) -> Table:
    """`events list` and a dry run on a terminal: two lines an event, so that the ids fit
    whole on 80 columns."""
    table = Table(title=title, box=rich.box.SIMPLE_HEAD)
    # The ids and times whole; a long type (OrderCancellationRejected) wraps instead.
    offsets = max([len(str(e.offset)) for e in events] + [6])
    table.add_column("Offset", justify="right", no_wrap=True, min_width=offsets)
    table.add_column("Time (UTC)", no_wrap=True, min_width=10)
    table.add_column("Type", overflow="fold", min_width=9)
    table.add_column("Order / message id", no_wrap=True, min_width=36)
    for event in events:
        stamped = when(event.timestamp).replace(" ", "\n")
        table.add_row(
            str(event.offset),
            stamped,
            Text(event.message_type or "-"),
            Text(f"{event.order_id or '-'}\n{event.message_id or '-'}"),
        )
    return table


def _print_backfill(outcome: BackfillOutcome) -> None:
    out = console()
    noun = "event" if outcome.count == 1 else "events"
    if outcome.dry_run:
        out.print(
            f"Dry run: would copy {outcome.count} {noun} from {outcome.stream} to "
            f"{outcome.queue}; nothing was copied."
        )
        out.print(events_table(outcome.selected, "Would be copied"))
        return
    if outcome.last_copied is None or outcome.first_copied is None:
        out.print(f"Copied no events to {outcome.queue}: none in the range matched.")
        return
    out.print(
        f"Copied {outcome.count} {noun} from {outcome.stream} to {outcome.queue} "
        f"(offsets {outcome.first_copied.offset}-{outcome.last_copied.offset}, "
        f"the last stamped {when(outcome.last_copied.timestamp)} UTC); recorded in the "
        "audit log (checkout dlq history)."
    )
