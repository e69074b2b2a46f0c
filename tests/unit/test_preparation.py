"""`CHECKOUT_DATABASE_PREPARE`: its values, and how "auto" tells PostgreSQL from a pooler."""

from __future__ import annotations

import socket

import pytest

from infra.db.preparation import connect_kwargs, same_end
from infra.db.session import connect_kwargs as session_kwargs
from infra.settings import Settings, SettingsError, load_settings


@pytest.mark.parametrize(
    ("given", "read"),
    [
        ("auto", "auto"),
        ("AUTO", "auto"),
        ("true", True),
        ("1", True),
        ("on", True),
        ("false", False),
        ("0", False),
        ("no", False),
    ],
)
def test_the_setting_reads_auto_true_or_false(
    given: str, read: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHECKOUT_DATABASE_PREPARE", given)
    assert load_settings().database_prepare == read


def test_auto_is_the_default() -> None:
    assert Settings().database_prepare == "auto"


def test_another_word_is_refused_naming_the_variable_and_the_choices(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CHECKOUT_DATABASE_PREPARE", "sometimes")
    with pytest.raises(SettingsError, match="CHECKOUT_DATABASE_PREPARE") as refused:
        load_settings()
    assert "auto" in str(refused.value)
    assert "true or false" in str(refused.value)


def test_connections_are_opened_preparing_only_when_told_true() -> None:
    # "auto" opens them unprepared too: `choose_preparation` decides once they are open.
    assert connect_kwargs("auto") == {"prepare_threshold": None}
    assert connect_kwargs(False) == {"prepare_threshold": None}
    assert connect_kwargs(True) == {}
    assert session_kwargs(Settings()) == {"prepare_threshold": None}


def test_tcp_to_postgresql_itself_is_direct() -> None:
    direct, why = same_end(socket.AF_INET, ("127.0.0.1", 5432), "127.0.0.1", 5432)
    assert direct, why
    assert same_end(socket.AF_INET6, ("::1", 5432, 0, 0), "::1", 5432)[0]
    # An IPv4 client address seen by PostgreSQL on an IPv6 socket, and a scoped address.
    assert same_end(socket.AF_INET6, ("::ffff:10.0.0.5", 5432, 0, 0), "10.0.0.5", 5432)[0]
    assert same_end(socket.AF_INET6, ("fe80::1%eth0", 5432, 0, 2), "fe80::1", 5432)[0]


def test_a_pooler_or_proxy_in_between_is_not_direct() -> None:
    # PgBouncer on its own port of the same host, and on another host at PostgreSQL's port.
    direct, why = same_end(socket.AF_INET, ("127.0.0.1", 6432), "127.0.0.1", 5432)
    assert not direct
    assert "pooler or proxy" in why
    assert not same_end(socket.AF_INET, ("10.0.0.9", 5432), "10.0.0.5", 5432)[0]
    # A pooler that reaches PostgreSQL over its Unix socket.
    assert not same_end(socket.AF_INET, ("127.0.0.1", 6432), None, None)[0]


def test_a_unix_socket_is_direct_only_when_served_by_the_backends_postmaster() -> None:
    path = "/var/run/postgresql/.s.PGSQL.5432"
    direct, why = same_end(socket.AF_UNIX, path, None, None, peer_pid=700, parent=700)
    assert direct, why
    # PgBouncer's socket: served by PgBouncer, not by the backend's parent.
    assert not same_end(socket.AF_UNIX, path, None, None, peer_pid=900, parent=700)[0]
    # Not to be told: another pid namespace (no pid), or no backend process to read.
    assert not same_end(socket.AF_UNIX, path, None, None, peer_pid=None, parent=700)[0]
    assert not same_end(socket.AF_UNIX, path, None, None, peer_pid=700, parent=None)[0]
    # A Unix socket to a pooler that reaches PostgreSQL over TCP.
    assert not same_end(socket.AF_UNIX, path, "10.0.0.5", 5432, peer_pid=700, parent=700)[0]
