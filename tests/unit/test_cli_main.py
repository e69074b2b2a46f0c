"""The `checkout` command line: usage errors and bad settings, without starting anything."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from aio_pika.exceptions import (
    AMQPConnectionError,
    InvalidFrameError,
    ProbableAuthenticationError,
)
from typer.testing import CliRunner

from infra.cli import main as cli_main
from infra.cli.main import app
from infra.settings import Settings

runner = CliRunner()


def test_help_lists_every_command() -> None:
    result = runner.invoke(app, ["--help"])

    assert result.exit_code == 0
    for command in ("up", "migrate", "api", "relay", "saga", "mocks", "consumer", "demo"):
        assert command in result.stdout


def test_no_command_is_bad_usage() -> None:
    result = runner.invoke(app, [])

    assert result.exit_code == 2


def test_unknown_consumer_is_bad_usage_and_lists_the_choices() -> None:
    result = runner.invoke(app, ["consumer", "billing"])

    assert result.exit_code == 2
    for choice in ("invoice", "email", "production"):
        assert choice in result.stderr


def test_missing_consumer_name_is_bad_usage() -> None:
    result = runner.invoke(app, ["consumer"])

    assert result.exit_code == 2


def test_unknown_command_is_bad_usage() -> None:
    result = runner.invoke(app, ["launch"])

    assert result.exit_code == 2


def test_bad_setting_stops_with_one_line_naming_the_variable() -> None:
    result = runner.invoke(app, ["api"], env={"CHECKOUT_API_PORT": "x"})

    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: CHECKOUT_API_PORT: ")
    assert "'x'" in lines[0]
    assert result.stdout == ""


def test_every_command_checks_the_settings_first() -> None:
    for argv in (
        ["up"],
        ["migrate"],
        ["relay"],
        ["saga"],
        ["mocks"],
        ["consumer", "email"],
        ["demo"],
    ):
        result = runner.invoke(app, argv, env={"CHECKOUT_LOG_FORMAT": "xml"})

        assert result.exit_code == 1, argv
        assert result.stderr.startswith("error: CHECKOUT_LOG_FORMAT: "), argv
        assert len(result.stderr.strip().splitlines()) == 1, argv


# Every command that loads the settings, with its arguments.
EVERY_COMMAND = (
    ["up"],
    ["migrate"],
    ["declare"],
    ["api"],
    ["relay"],
    ["saga"],
    ["mocks"],
    ["consumer", "email"],
    ["demo"],
    ["dlq", "list"],
    ["dlq", "show", "email"],
    ["dlq", "history"],
    ["apikey", "list"],
)


@pytest.mark.parametrize(
    ("variable", "url", "expected"),
    [
        ("CHECKOUT_RABBIT_URL", "garbage", "expected amqp://"),
        ("CHECKOUT_RABBIT_URL", "amqp://guest:s3cr3t-Pw@127.0.0.1:notaport/", "expected amqp://"),
        ("CHECKOUT_DATABASE_URL", "mysql://u:s3cr3t-Pw@127.0.0.1/x", "expected postgresql"),
        ("CHECKOUT_DATABASE_URL", "garbage://x:s3cr3t-Pw@", "expected postgresql"),
    ],
)
def test_a_malformed_url_stops_every_command_with_one_line(
    variable: str, url: str, expected: str
) -> None:
    for argv in EVERY_COMMAND:
        result = runner.invoke(app, argv, env={variable: url})

        assert result.exit_code == 1, (argv, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, (argv, result.stderr)
        assert lines[0].startswith(f"error: {variable}: "), argv
        assert expected in lines[0], argv
        assert "s3cr3t-Pw" not in result.output, argv


BROKER_PARTS = (["relay"], ["saga"], ["consumer", "email"])


def _fake_part(calls: list[tuple[object, ...]], error: BaseException | None = None) -> Any:
    def load(module: str) -> Callable[..., None]:
        def run(*args: object) -> None:
            calls.append((module, *args))
            if error is not None:
                raise error

        return run

    return load


@pytest.mark.parametrize(
    ("error", "says"),
    [
        (
            AMQPConnectionError(111, "Connection refused"),
            "error: RabbitMQ at 127.0.0.1:5999 is not answering: start it "
            "(rabbitmq-server -detached, or docker compose up -d rabbitmq) "
            "or set CHECKOUT_RABBIT_URL",
        ),
        (
            TimeoutError(),
            "error: RabbitMQ at 127.0.0.1:5999 is not answering: start it "
            "(rabbitmq-server -detached, or docker compose up -d rabbitmq) "
            "or set CHECKOUT_RABBIT_URL",
        ),
        (
            ProbableAuthenticationError("ACCESS_REFUSED - Login was refused"),
            "error: RabbitMQ at 127.0.0.1:5999 refused the login "
            "(ACCESS_REFUSED - Login was refused): check CHECKOUT_RABBIT_URL",
        ),
        (
            InvalidFrameError("Expected one of ['Connection.OpenOk']"),
            "error: RabbitMQ at 127.0.0.1:5999 refused the connection "
            "(Expected one of ['Connection.OpenOk']): check the virtual host in "
            "CHECKOUT_RABBIT_URL and the user's permissions on it",
        ),
    ],
)
def test_a_part_that_needs_the_broker_does_not_start_without_it(
    monkeypatch: pytest.MonkeyPatch, error: BaseException, says: str
) -> None:
    async def refused(_settings: object) -> None:
        raise error

    calls: list[tuple[object, ...]] = []
    monkeypatch.setattr(cli_main, "_connect_once", refused)
    monkeypatch.setattr(cli_main, "_part", _fake_part(calls))
    for argv in BROKER_PARTS:
        result = runner.invoke(
            app, argv, env={"CHECKOUT_RABBIT_URL": "amqp://guest:pw@127.0.0.1:5999/"}
        )

        assert result.exit_code == 1, argv
        assert result.stderr.strip().splitlines() == [says], argv
    assert calls == []


def test_a_broker_gone_while_the_part_starts_is_the_same_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def answers(_settings: object) -> None:
        return None

    calls: list[tuple[object, ...]] = []
    monkeypatch.setattr(cli_main, "_connect_once", answers)
    monkeypatch.setattr(
        cli_main, "_part", _fake_part(calls, AMQPConnectionError(111, "Connection refused"))
    )
    for argv in BROKER_PARTS:
        result = runner.invoke(app, argv, env={"CHECKOUT_RABBIT_URL": "amqps://u:pw@rabbit/"})

        assert result.exit_code == 1, argv
        assert result.stderr.strip().splitlines() == [
            "error: RabbitMQ at rabbit:5671 is not answering: start it "
            "(rabbitmq-server -detached, or docker compose up -d rabbitmq) "
            "or set CHECKOUT_RABBIT_URL"
        ], argv
    assert [call[0] for call in calls] == ["infra.messaging.relay", "saga.main", "consumers.main"]


def test_a_part_runs_once_the_broker_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    async def answers(_settings: object) -> None:
        return None

    calls: list[tuple[object, ...]] = []
    monkeypatch.setattr(cli_main, "_connect_once", answers)
    monkeypatch.setattr(cli_main, "_part", _fake_part(calls))

    result = runner.invoke(app, ["consumer", "email"])

    assert result.exit_code == 0, result.output
    [(module, settings, name)] = calls
    assert (module, name) == ("consumers.main", "email")
    assert isinstance(settings, Settings)


def test_the_api_and_the_mocks_start_without_asking_the_broker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def refused(_settings: object) -> None:
        raise AMQPConnectionError(111, "Connection refused")

    calls: list[tuple[object, ...]] = []
    monkeypatch.setattr(cli_main, "_connect_once", refused)
    monkeypatch.setattr(cli_main, "_part", _fake_part(calls))
    for argv in (["api"], ["mocks"]):
        result = runner.invoke(app, argv)

        assert result.exit_code == 0, (argv, result.output)
    assert [call[0] for call in calls] == ["checkout_api.main", "mock_services.main"]
