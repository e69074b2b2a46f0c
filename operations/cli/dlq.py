"""`checkout dlq ...`: list, show, replay and purge dead-lettered messages; the audit log.

A thin shell around `operations.dlq`: it checks the usage, connects, runs one async
function and prints the result: tables (and a progress bar) on a terminal, one JSON
document on a pipe or with `--json`. Errors are one line on stderr: exit 1 when
something is down or failed (saying what to start), 2 for bad usage (saying what
would be right). Register it with `app.add_typer(dlq_app, name="dlq")`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated

import rich.progress
import typer
from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderResult
from rich.table import Table
from rich.text import Text

from infra.cli.output import console, fail, is_terminal, print_json, settings_or_exit
from infra.messaging import failures
from infra.messaging.topology import ConsumedQueue, Topology
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
from operations.dlq import audit, inspect, operations
from operations.dlq.audit import AuditRecord
from operations.dlq.errors import AuditUnavailable, Interrupted, QueueNotDeclared, UnknownQueue
from operations.dlq.inspect import Peek, QueueDepth
from operations.dlq.letters import DeadLetter
from operations.dlq.outcome import Outcome, Progress
from operations.dlq.queues import resolve
from operations.dlq.selection import Selection

CLIENT_NAME = "dlq-cli"  # the broker connection's name, after the namespace
ERROR_WIDTH = 60  # `dlq show` on a terminal cuts an error's message to this many characters
ERROR_MIN_WIDTH = 24  # the table has at least this much room for the error, else blocks

dlq_app = typer.Typer(
    name="dlq",
    help="Dead-lettered messages: list, show, replay, purge, and the audit log of it all.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

QueueArg = Annotated[
    str,
    typer.Argument(
        metavar="QUEUE",
        help="A consumed queue (checkout.email), its dead-letter queue (checkout.email.dlq) "
        "or its short name (email); each means that dead-letter queue.",
        show_default=False,
    ),
]
AllOpt = Annotated[bool, typer.Option("--all", help="Every message of the dead-letter queue.")]
IdsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--message-id",
        metavar="ID...",
        help="Only the message with this id; repeat it, or give several ids after it.",
        show_default=False,
    ),
]
ReasonOpt = Annotated[
    str | None, typer.Option(metavar="TEXT", help="Why; kept in the audit log.", show_default=False)
]


# --------------------------------------------------------------------------- commands


@dlq_app.command("list")
def list_queues(json_: JsonOpt = False) -> None:
    """Every dead-letter queue with its number of messages."""
    settings = settings_or_exit()
    topology = Topology.from_settings(settings)

    async def main() -> list[QueueDepth]:
        async with broker(settings, CLIENT_NAME) as connection:
            return await inspect.depths(connection, topology)

    found = run(settings, main(), _errors(settings))
    if json_ or not is_terminal():
        print_json([d.as_json() for d in found])
    else:
        console().print(depth_table(found))


@dlq_app.command()
def show(
    queue: QueueArg,
    limit: Annotated[int, typer.Option(min=1, metavar="N", help="Show the first N.")] = 20,
    json_: JsonOpt = False,
) -> None:
    """The dead-lettered messages with their error and attempt headers; they stay in place."""
    settings = settings_or_exit()
    target = _queue_or_exit(settings, queue)

    async def main() -> Peek:
        async with broker(settings, CLIENT_NAME) as connection:
            return await inspect.peek(connection, target, limit)

    peeked = run(settings, main(), _errors(settings))
    if json_ or not is_terminal():
        print_json([letter.as_json() for letter in peeked.letters])
    else:
        console().print(LettersView(peeked))


@dlq_app.command(context_settings={"allow_extra_args": True})
def replay(
    ctx: typer.Context,
    queue: QueueArg,
    all_: AllOpt = False,
    message_ids: IdsOpt = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would be replayed; move nothing.")
    ] = False,
    rate: Annotated[
        float | None,
        typer.Option(metavar="N", help="At most N messages a second.", show_default=False),
    ] = None,
    reason: ReasonOpt = None,
) -> None:
    """Send messages back to the queue they came from, with their retries reset."""
    settings = settings_or_exit()
    target = _queue_or_exit(settings, queue)
    selection = _selection_or_exit(all_, message_ids, ctx.args)
    if rate is not None and rate <= 0:
        fail("--rate must be a positive number of messages a second", 2)
    actor = current_actor()
    live = is_terminal()

    async def main() -> Outcome:
        async with broker(settings, CLIENT_NAME) as connection, audit_log(settings) as uow:
            with _progress_bar("Replaying" if not dry_run else "Looking", live) as bar:
                return await operations.replay_recorded(
                    connection,
                    uow,
                    target,
                    selection,
                    actor=actor,
                    reason=reason,
                    rate=rate,
                    dry_run=dry_run,
                    on_progress=bar,
                )

    _report(run(settings, main(), _errors(settings)), live)


@dlq_app.command(context_settings={"allow_extra_args": True})
def purge(
    ctx: typer.Context,
    queue: QueueArg,
    all_: AllOpt = False,
    message_ids: IdsOpt = None,
    yes: Annotated[bool, typer.Option("--yes", help="Yes, drop them for good.")] = False,
    reason: ReasonOpt = None,
) -> None:
    """Drop messages from a dead-letter queue for good."""
    settings = settings_or_exit()
    target = _queue_or_exit(settings, queue)
    selection = _selection_or_exit(all_, message_ids, ctx.args)
    if not yes:
        fail(f"purge drops messages from {target.dlq} for good: add --yes to confirm", 2)
    actor = current_actor()
    live = is_terminal()

    async def main() -> Outcome:
        async with broker(settings, CLIENT_NAME) as connection, audit_log(settings) as uow:
            with _progress_bar("Purging", live) as bar:
                return await operations.purge_recorded(
                    connection,
                    uow,
                    target,
                    selection,
                    actor=actor,
                    reason=reason,
                    on_progress=bar,
                )

    _report(run(settings, main(), _errors(settings)), live)


@dlq_app.command()
def history(
    json_: JsonOpt = False,
    limit: Annotated[
        int | None,
        typer.Option(min=1, metavar="N", help="Only the newest N.", show_default=False),
    ] = None,
) -> None:
    """The audit log of replays, purges and backfills, newest first: who, when, what, why."""
    settings = settings_or_exit()

    async def main() -> list[AuditRecord]:
        async with audit_log(settings) as uow:
            return await audit.history(uow, limit)

    records = run(settings, main(), _errors(settings))
    if json_ or not is_terminal():
        print_json([r.as_json() for r in records])
    else:
        console().print(history_table(records))


# --------------------------------------------------------------------------- usage


def _queue_or_exit(settings: Settings, name: str) -> ConsumedQueue:
    try:
        return resolve(Topology.from_settings(settings), name)
    except UnknownQueue as exc:
        fail(str(exc), 2)


def _selection_or_exit(all_: bool, ids: list[str] | None, extra: list[str]) -> Selection:
    # `--message-id a b c`: click hands the ids after the first one over as extra args.
    if extra and not ids:
        fail(f"unexpected argument {extra[0]!r}; message ids follow --message-id", 2)
    if all_ and ids:
        fail("give either --all or --message-id, not both", 2)
    if all_:
        return Selection.every()
    if not ids:
        fail("say which messages: --all, or --message-id ID (repeatable)", 2)
    try:
        return Selection.of([*ids, *extra])
    except ValueError as exc:
        fail(str(exc), 2)


# --------------------------------------------------------------------------- errors


def _errors(settings: Settings) -> Callable[[Exception], None]:
    """The command's line for each dead-letter operation's error (`run`'s `on_error`)."""

    def on_error(exc: Exception) -> None:
        if isinstance(exc, QueueNotDeclared):
            fail(undeclared(settings, exc, "start the system once (checkout up) to declare it"))
        if isinstance(exc, AuditUnavailable):
            fail(_audit_failure(settings, exc))
        if isinstance(exc, Interrupted):
            fail(exc.describe())

    return on_error


def _audit_failure(settings: Settings, exc: AuditUnavailable) -> str:
    problem = audit_problem(settings, exc)
    moved = exc.already_moved()
    return problem if moved is None else f"{moved}: {problem}"


# --------------------------------------------------------------------------- output


@contextmanager
def _progress_bar(verb: str, live: bool) -> Iterator[Progress | None]:
    """A progress bar over the dead-letter queue on a terminal; nothing on a pipe."""
    if not live:
        yield None
        return
    with rich.progress.Progress(
        rich.progress.TextColumn("{task.description}"),
        rich.progress.BarColumn(),
        rich.progress.MofNCompleteColumn(),
        rich.progress.TimeElapsedColumn(),
        console=console(),
        transient=True,
    ) as bar:
        task: list[rich.progress.TaskID] = []

        def advance(outcome: Outcome) -> None:
            if not task:
                task.append(bar.add_task(verb, total=outcome.total))
            bar.update(
                task[0],
                completed=outcome.scanned,
                description=f"{verb} {outcome.queue.dlq}: {outcome.count} selected",
            )

        yield advance


def _report(outcome: Outcome, live: bool) -> None:
    """Print what was done; exit 1 when some of the asked-for ids were not found."""
    if live:
        _print_outcome(outcome)
    else:
        print_json(outcome.summary())
    if outcome.missing:
        short = outcome.queue.name.rsplit(".", 1)[-1]
        verb = "is" if len(outcome.missing) == 1 else "are"
        fail(
            f"{len(outcome.missing)} of the given message ids {verb} not in "
            f"{outcome.queue.dlq}: {', '.join(outcome.missing)} "
            f"(`checkout dlq show {short}` lists the ids it holds)"
        )


def _print_outcome(outcome: Outcome) -> None:
    out = console()
    noun = "message" if outcome.count == 1 else "messages"
    if outcome.action == "purge":
        out.print(f"Purged {outcome.count} {noun} from {outcome.queue.dlq}.")
    elif outcome.dry_run:
        out.print(
            f"Dry run: would replay {outcome.count} {noun} from {outcome.queue.dlq} "
            f"to {outcome.queue.name}; nothing was moved."
        )
        for message_id in outcome.message_ids:
            out.print(f"  {message_id}")
    else:
        out.print(
            f"Replayed {outcome.count} {noun} from {outcome.queue.dlq} to {outcome.queue.name}."
        )


def depth_table(depths: list[QueueDepth]) -> Table:
    """`dlq list` on a terminal."""
    table = Table(title="Dead-letter queues")
    table.add_column("Queue")
    table.add_column("Dead-letter queue")
    table.add_column("Messages", justify="right")
    for d in depths:
        count = f"[bold red]{d.messages}[/]" if d.messages else "0"
        table.add_row(d.queue, d.dlq, count)
    return table


class LettersView:
    """`dlq show` on a terminal, laid out for the console's width when it is printed.

    The table (`letters_table`) when the console is wide enough for its ids and times
    whole and some room for the error; otherwise (80 columns are too few) one block of
    lines a message (`letters_blocks`), so that the attempts and the error always show.
    """

    def __init__(self, peeked: Peek) -> None:
        self.peeked = peeked

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        table = letters_table(self.peeked)
        if options.max_width >= _whole_width(table):
            yield table
        elif self.peeked.letters:
            yield letters_blocks(self.peeked)
        else:
            yield Text(_letters_title(self.peeked))


def letters_table(peeked: Peek) -> Table:
    """`dlq show` on a wide terminal: two lines a message, so that the ids fit whole."""
    table = Table(title=_letters_title(peeked))
    table.add_column("Message id / checkout id", no_wrap=True)
    table.add_column("Type", no_wrap=True)
    table.add_column("Attempts", justify="right", no_wrap=True)
    table.add_column("First / last failure (UTC)", no_wrap=True)
    table.add_column("Error", min_width=ERROR_MIN_WIDTH)
    for letter in peeked.letters:
        kind, message = _error_lines(letter)
        table.add_row(
            Text(f"{letter.message_id or '-'}\n{letter.correlation_id or '-'}"),
            Text(letter.message_type or "-"),
            Text(_attempts(letter)),
            Text(
                f"{when(letter.headers.get(failures.FIRST_FAILURE_AT))}\n"
                f"{when(letter.headers.get(failures.LAST_FAILURE_AT))}"
            ),
            Text(f"{kind}\n{message}" if message else kind),
            end_section=True,
        )
    return table


def letters_blocks(peeked: Peek) -> Table:
    """`dlq show` on a narrow terminal: a block of labelled lines a message."""
    table = Table(title=_letters_title(peeked), show_header=False)
    table.add_column("Field", style="bold", no_wrap=True)
    table.add_column("Value", overflow="fold")
    for letter in peeked.letters:
        kind, message = _error_lines(letter)
        first = when(letter.headers.get(failures.FIRST_FAILURE_AT))
        last = when(letter.headers.get(failures.LAST_FAILURE_AT))
        for field, value in (
            ("Message id", letter.message_id or "-"),
            ("Checkout id", letter.correlation_id or "-"),
            ("Type", letter.message_type or "-"),
            ("Attempts", _attempts(letter)),
            ("Failed (UTC)", f"first {first}, last {last}"),
        ):
            table.add_row(field, Text(value))
        table.add_row("Error", Text(f"{kind}\n{message}" if message else kind), end_section=True)
    return table


def _letters_title(peeked: Peek) -> str:
    return f"{peeked.queue.dlq}: {len(peeked.letters)} of {peeked.depth} messages"


def _attempts(letter: DeadLetter) -> str:
    return str(letter.attempts) if letter.attempts is not None else "-"


def _error_lines(letter: DeadLetter) -> tuple[str, str]:
    """The error's type, and its message on one line shortened to `ERROR_WIDTH` (or "")."""
    kind, _, message = letter.error.partition(": ")
    return kind or "-", shorten(message, ERROR_WIDTH) if message else ""


def _whole_width(table: Table) -> int:
    """The width `table` needs for its no-wrap columns whole and the others at their minimum."""
    widths = []
    for column in table.columns:
        if column.no_wrap:
            texts = [str(column.header), *(str(cell) for cell in column.cells)]
            widths.append(max(cell_len(line) for text in texts for line in text.split("\n")))
        else:
            widths.append(column.min_width or 1)
    # Each column is padded by a space either side; a line between columns and at the edges.
    return sum(widths) + 3 * len(widths) + 1


def history_table(records: list[AuditRecord]) -> Table:
    """`dlq history` on a terminal."""
    table = Table(title="Dead-letter audit log (newest first)")
    for column in ("When (UTC)", "Actor", "Action", "Dead-letter queue"):
        table.add_column(column, no_wrap=True)
    table.add_column("Messages", justify="right")
    table.add_column("Outcome")
    table.add_column("Reason")
    table.add_column("Message ids")
    for r in records:
        ids = ", ".join(str(i) for i in r.message_ids[:3])
        if len(r.message_ids) > 3:
            ids += f" (+{len(r.message_ids) - 3} more)"
        outcome = r.outcome
        if r.missing:
            outcome += f"\n{len(r.missing)} not found"
        table.add_row(
            when(r.at),
            Text(r.actor),
            r.action,
            f"{r.dlq} → {r.queue}" if r.action == "backfill" else r.dlq,  # log → queue
            str(r.messages),
            outcome,
            Text(r.reason or ""),
            Text(ids),
        )
    return table


def shorten(text: str, width: int) -> str:
    """`text` on one line, cut to `width` characters with an ellipsis."""
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"
