"""`checkout dlq` usage errors and terminal rendering, without a broker or a database."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import pytest
from rich.console import Console
from rich.table import Table
from typer.testing import CliRunner

from infra.messaging import failures
from infra.messaging.topology import Topology
from infra.settings import load_settings
from operations.cli.dlq import (
    current_actor,
    depth_table,
    dlq_app,
    history_table,
    letters_table,
    shorten,
)
from operations.dlq.audit import AuditRecord
from operations.dlq.inspect import Peek, QueueDepth
from operations.dlq.letters import DeadLetter

runner = CliRunner()


def _one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.mark.parametrize(
    "args",
    [["show", "billing"], ["replay", "billing", "--all"], ["purge", "billing", "--all", "--yes"]],
    ids=["show", "replay", "purge"],
)
def test_an_unknown_queue_is_bad_usage_and_lists_the_known_ones(args: list[str]) -> None:
    result = runner.invoke(dlq_app, args)

    assert result.exit_code == 2
    line = _one_error_line(result.stderr)
    assert "'billing'" in line
    for queue in Topology.from_settings(load_settings()).queues.values():
        assert queue.name in line
    assert result.stdout == ""


@pytest.mark.parametrize(
    "args", [["replay", "email"], ["purge", "email", "--yes"]], ids=["replay", "purge"]
)
def test_neither_all_nor_ids_is_bad_usage(args: list[str]) -> None:
    result = runner.invoke(dlq_app, args)

    assert result.exit_code == 2
    assert "--all" in _one_error_line(result.stderr)
    assert "--message-id" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["replay", "email", "--all", "--message-id", "m1"],
        ["purge", "email", "--all", "--message-id", "m1", "--yes"],
    ],
    ids=["replay", "purge"],
)
def test_both_all_and_ids_is_bad_usage(args: list[str]) -> None:
    result = runner.invoke(dlq_app, args)

    assert result.exit_code == 2
    assert "not both" in _one_error_line(result.stderr)


def test_purge_without_yes_refuses_and_says_to_add_it() -> None:
    result = runner.invoke(dlq_app, ["purge", "email", "--all"])

    assert result.exit_code == 2
    assert "add --yes" in _one_error_line(result.stderr)


@pytest.mark.parametrize("rate", ["0", "-1"])
def test_a_rate_that_is_not_positive_is_bad_usage(rate: str) -> None:
    result = runner.invoke(dlq_app, ["replay", "email", "--all", "--rate", rate])

    assert result.exit_code == 2
    assert "--rate" in result.stderr


def test_a_stray_argument_is_bad_usage() -> None:
    result = runner.invoke(dlq_app, ["replay", "email", "--all", "m1"])

    assert result.exit_code == 2
    assert "'m1'" in _one_error_line(result.stderr)


def test_a_bad_setting_stops_with_one_line_naming_the_variable() -> None:
    result = runner.invoke(dlq_app, ["list"], env={"CHECKOUT_PREFETCH": "x"})

    assert result.exit_code == 1
    assert _one_error_line(result.stderr).startswith("error: CHECKOUT_PREFETCH: ")


def test_no_command_is_bad_usage() -> None:
    assert runner.invoke(dlq_app, []).exit_code == 2


def test_the_actor_is_checkout_actor_when_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHECKOUT_ACTOR", "alice")
    assert current_actor() == "alice"

    monkeypatch.delenv("CHECKOUT_ACTOR")
    assert current_actor()  # the operating-system user


def test_shorten_keeps_one_line_within_the_width() -> None:
    assert shorten("short", 10) == "short"
    assert shorten("a\nlong   error message", 10) == "a long er…"


def _render(table: Table) -> str:
    out = io.StringIO()
    Console(file=out, width=250, color_system=None).print(table)
    return out.getvalue()


def test_the_list_table_shows_each_queue_and_depth() -> None:
    text = _render(depth_table([QueueDepth("ns.email", "ns.email.dlq", 3)]))

    assert "ns.email.dlq" in text
    assert "3" in text


def test_the_show_table_has_ids_attempts_times_and_a_shortened_error() -> None:
    letter = DeadLetter(
        "m-1",
        "c-1",
        "OrderPaid",
        {
            failures.ATTEMPTS: 4,
            failures.FIRST_FAILURE_AT: "2026-11-22T10:00:00.123+01:00",
            failures.LAST_FAILURE_AT: "2026-11-22T09:01:00+00:00",
            failures.ERROR_TYPE: "TransientFailure",
            failures.ERROR_MESSAGE: "x" * 500,
        },
    )
    queue = Topology("ns", (100,)).queues["email"]

    text = _render(letters_table(Peek(queue, 7, [letter])))

    assert "ns.email.dlq: 1 of 7 messages" in text
    for part in (
        "m-1",
        "c-1",
        "OrderPaid",
        " 4 ",
        "2026-11-22 09:00:00",
        "2026-11-22 09:01:00",
        "TransientFailure",
        "xxx…",
    ):
        assert part in text
    assert "x" * 100 not in text


def test_the_history_table_shows_who_what_and_why() -> None:
    record = AuditRecord(
        id=1,
        at=datetime(2026, 11, 22, 10, 0, tzinfo=UTC),
        actor="alice",
        action="replay",
        queue="ns.email",
        dlq="ns.email.dlq",
        messages=5,
        message_ids=["a", "b", "c", "d", "e"],
        missing=[],
        reason="mail server back",
        outcome="completed",
    )

    text = _render(history_table([record]))

    for part in (
        "2026-11-22 10:00:00",
        "alice",
        "replay",
        "ns.email.dlq",
        "mail server back",
        "a, b, c (+2 more)",
    ):
        assert part in text
