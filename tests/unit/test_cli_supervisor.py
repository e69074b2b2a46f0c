"""The supervisor's pure parts: restart delays, output formats, the system's part list."""

from __future__ import annotations

import io
import json
import sys

import pytest

from infra.cli.supervisor import (
    Backoff,
    ConsoleSink,
    JsonSink,
    Part,
    Supervisor,
    child_environment,
    health_ports,
    local_url,
    system_parts,
)
from infra.settings import load_settings


def test_restart_delay_doubles_up_to_the_cap() -> None:
    backoff = Backoff()

    assert [backoff.delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


def test_console_lines_are_prefixed_and_padded() -> None:
    out = io.StringIO()
    sink = ConsoleSink(["api", "production"], stream=out)

    sink.child_line("api", "listening")
    sink.child_line("production", "consuming")
    sink.note("part exited", level="warning", part="api", restart_in="2s")

    assert out.getvalue().splitlines() == [
        "api        | listening",
        "production | consuming",
        "supervisor | part exited  part=api restart_in=2s",
    ]


def test_console_colours_only_when_asked() -> None:
    out = io.StringIO()

    ConsoleSink(["api"], stream=out, colour=True).child_line("api", "x")

    assert out.getvalue().startswith("\x1b[")
    assert "api" in out.getvalue()


def test_json_lines_pass_through_and_other_lines_are_wrapped() -> None:
    out = io.StringIO()
    sink = JsonSink(stream=out)
    line = '{"event": "request", "component": "api", "level": "info"}'

    sink.child_line("api", line)
    sink.child_line("api", "Traceback (most recent call last):")
    sink.child_line("api", "")
    sink.note("part exited", level="warning", part="api")

    first, second, third = out.getvalue().splitlines()
    assert first == line
    assert json.loads(second)["component"] == "api"
    assert json.loads(second)["event"] == "Traceback (most recent call last):"
    assert json.loads(third) | {"timestamp": None} == {
        "timestamp": None,
        "level": "warning",
        "component": "supervisor",
        "event": "part exited",
        "part": "api",
    }


def test_the_system_runs_every_part_through_the_cli() -> None:
    parts = system_parts()

    assert [p.name for p in parts] == [
        "mocks",
        "api",
        "relay",
        "saga",
        "invoice",
        "email",
        "production",
    ]
    assert all(p.argv[:3] == (sys.executable, "-m", "infra.cli") for p in parts)
    assert parts[-1].argv[3:] == ("consumer", "production")


def test_children_log_in_the_supervisors_format(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHECKOUT_LOG_FORMAT", "console")

    env = child_environment(load_settings())

    assert env["CHECKOUT_LOG_FORMAT"] == "console"
    assert env["PYTHONUNBUFFERED"] == "1"


def test_local_url_replaces_the_any_address() -> None:
    assert local_url("0.0.0.0", 8000) == "http://127.0.0.1:8000"
    assert local_url("localhost", 8001) == "http://localhost:8001"
    assert local_url("::1", 8001) == "http://[::1]:8001"


def test_part_names_must_be_unique() -> None:
    with pytest.raises(ValueError, match="unique"):
        Supervisor([Part("a", ["true"]), Part("a", ["true"])], JsonSink())


def test_workers_get_distinct_free_health_ports_by_default() -> None:
    settings = load_settings(health_port=None)

    first, second = health_ports(settings), health_ports(settings)

    assert set(first) == {"relay", "saga", "invoice", "email", "production"}
    assert len(set(first.values())) == len(first)  # no two parts of one system share one
    assert all(port > 0 for port in first.values())
    # Two systems on one machine each get ports free at their start.
    assert set(first.values()) != set(second.values())


class _Handed:
    """A socket whose bind(0) is given, in turn, the ports of a script."""

    script: list[int] = []

    def __init__(self) -> None:
        self.port = 0

    def __enter__(self) -> _Handed:
        return self

    def __exit__(self, *_: object) -> None:
        return None

    def bind(self, _: tuple[str, int]) -> None:
        self.port = self.script.pop(0)

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)


def test_a_worker_never_gets_the_api_or_mocks_port(monkeypatch: pytest.MonkeyPatch) -> None:
    # Free at the moment the supervisor chooses, they are the API's and the mocks' once
    # those start: a worker's health endpoint there once answered in the API's place.
    settings = load_settings(health_port=None, api_port=41000, mocks_port=41001)
    _Handed.script = [41000, 42000, 41001, 42001, 42002, 42003, 42004]
    monkeypatch.setattr("infra.cli.supervisor.socket.socket", _Handed)

    ports = health_ports(settings)

    assert sorted(ports.values()) == [42000, 42001, 42002, 42003, 42004]


def test_a_health_port_setting_is_the_first_of_consecutive_ports() -> None:
    ports = health_ports(load_settings(health_port=9100))

    assert ports == {
        "relay": 9100,
        "saga": 9101,
        "invoice": 9102,
        "email": 9103,
        "production": 9104,
    }


def test_each_worker_part_is_started_with_its_own_health_port() -> None:
    parts = {p.name: p for p in system_parts(health_ports={"relay": 4001, "email": 4002})}

    assert parts["relay"].env == {"CHECKOUT_HEALTH_PORT": "4001"}
    assert parts["email"].env == {"CHECKOUT_HEALTH_PORT": "4002"}
    assert parts["api"].env == {}
