"""The `checkout` command line: usage errors and bad settings, without starting anything."""

from __future__ import annotations

from typer.testing import CliRunner

from infra.cli.main import app

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
