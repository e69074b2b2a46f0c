"""What `checkout up` and `checkout migrate` do before any part starts: database and broker."""

from __future__ import annotations

import socket

import pytest
from typer.testing import CliRunner

from infra.cli.main import app
from infra.cli.supervisor import StartupError, prepare_broker, prepare_database
from infra.db.migrate import drop_database
from infra.messaging.topology import Topology
from infra.settings import Settings, load_settings

runner = CliRunner()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_migrate_brings_the_database_to_head(settings: Settings) -> None:
    result = runner.invoke(app, ["migrate"])

    assert result.exit_code == 0, result.output
    database = settings.database_url.get_secret_value().rsplit("/", 1)[1]
    assert f"database {database}: already existed" in result.stdout
    assert "migrated to head" in result.stdout


def test_migrate_creates_a_missing_database(settings: Settings) -> None:
    url = settings.database_url.get_secret_value() + "_fresh"
    try:
        result = runner.invoke(app, ["migrate"], env={"CHECKOUT_DATABASE_URL": url})

        assert result.exit_code == 0, result.output
        assert ": created" in result.stdout
    finally:
        drop_database(url)


def test_migrate_without_postgres_says_what_to_start(settings: Settings) -> None:
    port = _closed_port()
    url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/checkout"

    result = runner.invoke(app, ["migrate"], env={"CHECKOUT_DATABASE_URL": url})

    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"error: PostgreSQL at 127.0.0.1:{port} is not answering: start it "
        "(pg_ctlcluster <version> main start, or docker compose up -d postgres) "
        "or set CHECKOUT_DATABASE_URL"
    ]


def test_a_database_that_refuses_us_is_told_apart(settings: Settings) -> None:
    url = settings.database_url.get_secret_value().replace("postgres@", "no_such_role@", 1)

    with pytest.raises(StartupError, match=r"refused us .*no_such_role.*CHECKOUT_DATABASE_URL"):
        prepare_database(load_settings(database_url=url))


async def test_the_topology_is_declared(settings: Settings, topology: Topology) -> None:
    # `topology` declared the same names already and removes them after the run:
    # declaring again is a no-op, which is what every restart of `checkout up` does.
    await prepare_broker(settings)


async def test_without_rabbitmq_says_what_to_start() -> None:
    port = _closed_port()
    settings = load_settings(rabbit_url=f"amqp://guest:guest@127.0.0.1:{port}/")

    with pytest.raises(StartupError) as error:
        await prepare_broker(settings)

    assert str(error.value) == (
        f"RabbitMQ at 127.0.0.1:{port} is not answering: start it (rabbitmq-server -detached, "
        "or docker compose up -d rabbitmq) or set CHECKOUT_RABBIT_URL"
    )


async def test_a_broker_that_refuses_the_login_is_told_apart(settings: Settings) -> None:
    url = settings.rabbit_url.get_secret_value().replace("guest:guest@", "guest:wrong@", 1)

    with pytest.raises(StartupError, match="refused the login"):
        await prepare_broker(load_settings(rabbit_url=url))


def test_up_without_rabbitmq_stops_with_one_line(settings: Settings) -> None:
    port = _closed_port()

    result = runner.invoke(
        app, ["up"], env={"CHECKOUT_RABBIT_URL": f"amqp://guest:guest@127.0.0.1:{port}/"}
    )

    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"error: RabbitMQ at 127.0.0.1:{port} is not answering")


@pytest.mark.parametrize("argv", [["relay"], ["saga"], ["consumer", "invoice"]])
def test_a_part_alone_without_rabbitmq_stops_with_one_line(
    settings: Settings, argv: list[str]
) -> None:
    port = _closed_port()

    result = runner.invoke(
        app, argv, env={"CHECKOUT_RABBIT_URL": f"amqp://guest:guest@127.0.0.1:{port}/"}
    )

    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"error: RabbitMQ at 127.0.0.1:{port} is not answering: start it "
        "(rabbitmq-server -detached, or docker compose up -d rabbitmq) or set CHECKOUT_RABBIT_URL"
    ]


def test_a_part_alone_refused_by_rabbitmq_says_so_in_one_line(settings: Settings) -> None:
    url = settings.rabbit_url.get_secret_value().replace("guest:guest@", "guest:wrong@", 1)

    result = runner.invoke(app, ["saga"], env={"CHECKOUT_RABBIT_URL": url})

    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "refused the login" in lines[0]
    assert lines[0].endswith("check CHECKOUT_RABBIT_URL")
