"""Terminal-or-pipe helpers shared by the commands."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal

import pytest
import typer

from infra.cli.output import fail, is_terminal, print_json


def test_print_json_writes_one_document(capsys: pytest.CaptureFixture[str]) -> None:
    key = uuid.uuid4()

    print_json([{"id": key, "amount": Decimal("19.99")}])

    assert json.loads(capsys.readouterr().out) == [{"id": str(key), "amount": "19.99"}]


def test_a_captured_stdout_is_not_a_terminal() -> None:
    assert is_terminal() is False


def test_fail_prints_one_line_on_stderr_and_exits(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(typer.Exit) as exit_info:
        fail("something is wrong")

    assert exit_info.value.exit_code == 1
    captured = capsys.readouterr()
    assert captured.err == "error: something is wrong\n"
    assert captured.out == ""
