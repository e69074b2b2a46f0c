"""`checkout trace ID`: the timeline of one order (every checkout) or of one checkout.

Reads the database and, unless `--no-broker`, the dead-letter queues (messages stay
where they are). A timeline on a terminal; one JSON document on a pipe or with
`--json`. Exit 1 when the id is unknown or the database is down; 2 when the id is no
UUID. A broker that does not answer does not fail the command: the trace says that
the dead-letter queues were not read.

Register it with `app.command()(trace)`.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Annotated

import typer

from infra.cli.output import console, fail, is_terminal, print_json, settings_or_exit
from infra.db.session import create_engine
from infra.messaging.topology import Topology
from infra.settings import Settings, redact_url
from operations.cli.common import JsonOpt, database_or_exit, tolerant_broker
from operations.timeline.merge import Trace
from operations.timeline.query import trace as load_trace
from operations.timeline.render import print_trace, trace_json

CLIENT_NAME = "trace-cli"  # the broker connection's name, after the namespace


class _Unknown(Exception):
    pass


def trace(
    target: Annotated[
        str,
        typer.Argument(
            metavar="ORDER_ID",
            help=(
                "An order id (every checkout and cancellation of it), a checkout id (that "
                "one and the cancellations waiting for it), or a cancellation id (its order)."
            ),
            show_default=False,
        ),
    ],
    json_: JsonOpt = False,
    no_broker: Annotated[
        bool,
        typer.Option("--no-broker", help="Do not read the dead-letter queues."),
    ] = False,
) -> None:
    """Every hop of an order's checkouts and cancellations in time order, with durations:
    the request, the publishes, the sagas, the payment, the production cancellation, the
    refund, each consumer, retries, dead letters, replays."""
    try:
        target_id = uuid.UUID(target.strip())
    except ValueError:
        fail(f"{target!r} is not a UUID: give an order, checkout or cancellation id", 2)
    settings = settings_or_exit()
    try:
        with database_or_exit(settings):
            found = asyncio.run(_trace(settings, target_id, broker=not no_broker))
    except _Unknown:
        shown = redact_url(settings.database_url.get_secret_value()) or "CHECKOUT_DATABASE_URL"
        fail(
            f"no order, checkout or cancellation has the id {target_id} in {shown}: "
            "check the id, and that CHECKOUT_DATABASE_URL is the system's database"
        )
    if json_ or not is_terminal():
        print_json(trace_json(found))
    else:
        print_trace(found, console())


async def _trace(settings: Settings, target: uuid.UUID, *, broker: bool) -> Trace:
    engine = create_engine(settings, pool_size=1)
    try:
        async with (
            engine.connect() as conn,
            tolerant_broker(settings, broker, CLIENT_NAME) as (rabbit, error),
        ):
            found = await load_trace(
                conn,
                target,
                rabbit=rabbit,
                topology=Topology.from_settings(settings) if rabbit else None,
                broker_error=error,
            )
    finally:
        await engine.dispose()
    if found is None:
        raise _Unknown(target)
    return found
