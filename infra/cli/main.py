"""The `checkout` command: run the whole system or one part, migrate, operate, demo.

Each command loads the settings first (a bad one ends it with one line naming the
variable, exit 1) and imports its part only when it runs, so `checkout --help` and
`checkout migrate` stay fast and do not depend on every part being importable.
A part that cannot run without RabbitMQ (relay, saga, consumers) checks first that the
broker lets it in, and ends with one line saying what to start if not, as `checkout up`
does; the API starts without it (not ready until it answers), and every part waits for
PostgreSQL. Exit codes: 0 success, 1 failure, 2 bad usage.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from typing import Annotated, Any

import typer

from infra.cli.apikey import apikey_app
from infra.cli.output import fail, quiet_loggers, settings_or_exit
from infra.settings import Settings
from operations.cli.dlq import dlq_app
from operations.cli.events import events_app
from operations.cli.stuck import stuck
from operations.cli.trace import trace

# Seconds a part started alone gives RabbitMQ to let it in (as `checkout up` does).
BROKER_PATIENCE = 15.0

app = typer.Typer(
    name="checkout",
    help="Event-driven order checkout: API, outbox relay, saga, consumers, simulated services.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _part(module: str) -> Callable[..., None]:
    """The `run` of a part, imported now; one line if the part itself is missing."""
    try:
        loaded = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is None or not module.startswith(exc.name):
            raise  # a dependency of the part is missing: show the whole story
        fail(f"{module} is not available in this installation ({exc})")
    run: Callable[..., Any] = loaded.run
    return run


async def _connect_once(settings: Settings) -> None:
    import asyncio

    from infra.messaging.connect import connect

    async with asyncio.timeout(BROKER_PATIENCE):
        connection = await connect(settings.rabbit_url.get_secret_value())
    await connection.close()


def _broker_failure(settings: Settings, exc: BaseException) -> str:
    """One line for a broker a part cannot use, in the words of `checkout up`."""
    from infra.messaging.connect import broker_failure

    return broker_failure(
        settings.rabbit_url.get_secret_value(),
        exc,
        refused="the connection",
        hint=": check the virtual host in CHECKOUT_RABBIT_URL and the user's permissions on it",
    )


@contextmanager
def _needs_broker(settings: Settings) -> Iterator[None]:
    """Run a part that cannot start without RabbitMQ: one line and exit 1 if it is not there.

    The broker is tried once before the part starts (its client libraries would log the
    failure and the part end with a traceback); should it go away in between, the part's
    own failed connection at start ends with the same line. Once a part runs, losing the
    broker is no error: it reconnects by itself.
    """
    import asyncio

    from aio_pika.exceptions import AMQPConnectionError, AMQPError

    with quiet_loggers("aio_pika", "aiormq"):  # they log the failure; our line says it better
        try:
            asyncio.run(_connect_once(settings))
        except (AMQPError, OSError) as exc:  # TimeoutError is an OSError
            fail(_broker_failure(settings, exc))
    try:
        yield
    except AMQPConnectionError as exc:
        fail(_broker_failure(settings, exc))


class ConsumerName(StrEnum):
    """The consumers of `order.paid`, one queue each."""

    invoice = "invoice"
    email = "email"
    production = "production"


@app.command()
def up() -> None:
    """Migrate, declare the broker topology and run every part, with prefixed logs."""
    from infra.cli.supervisor import StartupError, run_system

    settings = settings_or_exit()
    try:
        run_system(settings)
    except StartupError as exc:
        fail(str(exc))


@app.command()
def migrate() -> None:
    """Create the database if it is missing and apply every migration."""
    from infra.cli.supervisor import StartupError, prepare_database

    settings = settings_or_exit()
    try:
        result = prepare_database(settings)
    except StartupError as exc:
        fail(str(exc))
    state = "created" if result.created else "already existed"
    typer.echo(f"database {result.database}: {state}")
    typer.echo(f"schema: migrated to head (revision {result.revision})")


@app.command()
def declare(
    migrate: Annotated[
        bool,
        typer.Option(
            "--migrate",
            help="Move queues declared with other arguments (an older deployment's classic "
            "queues) over to the current ones, messages and all. Stop the parts first.",
        ),
    ] = False,
) -> None:
    """Declare the broker topology (exchanges, queues, wait and dead-letter queues)."""
    import asyncio

    from infra.cli.supervisor import StartupError, prepare_broker

    settings = settings_or_exit()
    if migrate:
        from infra.messaging.topology import migrate_topology

        with _needs_broker(settings):
            moved = asyncio.run(migrate_topology(settings))
        for queue, count in moved.items():
            typer.echo(f"{queue}: migrated, {count} messages moved")
    try:
        asyncio.run(prepare_broker(settings))
    except StartupError as exc:
        fail(str(exc))
    typer.echo(f"broker topology of namespace {settings.namespace} declared")


@app.command()
def api() -> None:
    """Run the HTTP API alone."""
    settings = settings_or_exit()
    _part("checkout_api.main")(settings)


@app.command()
def relay() -> None:
    """Run the outbox relay alone."""
    settings = settings_or_exit()
    run = _part("infra.messaging.relay")
    with _needs_broker(settings):
        run(settings)


@app.command()
def saga() -> None:
    """Run the saga orchestrator and the payment step alone."""
    settings = settings_or_exit()
    run = _part("saga.main")
    with _needs_broker(settings):
        run(settings)


@app.command()
def mocks() -> None:
    """Run the simulated payment, email and production services alone."""
    settings = settings_or_exit()
    _part("mock_services.main")(settings)


@app.command()
def consumer(
    name: Annotated[ConsumerName, typer.Argument(metavar="NAME", help="Which consumer.")],
) -> None:
    """Run one consumer of `order.paid` alone."""
    settings = settings_or_exit()
    run = _part("consumers.main")
    with _needs_broker(settings):
        run(settings, name.value)


@app.command()
def demo(
    timeout: Annotated[
        float, typer.Option(min=1, help="Seconds to wait for every checkout to finish.")
    ] = 60.0,
) -> None:
    """Create sample orders, check them out and show their progress live."""
    from infra.cli.demo import main as run_demo

    settings = settings_or_exit()
    raise typer.Exit(run_demo(settings, timeout=timeout))


@app.command()
def contracts(
    check: Annotated[bool, typer.Option(help="Only check; exit 1 if anything is stale.")] = False,
) -> None:
    """Regenerate docs/asyncapi.*, docs/schemas/ and contracts/published/ from the models."""
    from contracts.schema import main as generate

    raise typer.Exit(generate(["--check"] if check else []))


# Sub-apps, one line each (with their import at the top):
app.add_typer(dlq_app, name="dlq")
app.add_typer(apikey_app, name="apikey")
app.add_typer(events_app, name="events")
app.command()(trace)
app.command()(stuck)
