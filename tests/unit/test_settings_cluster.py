"""The settings for running past one machine: broker URL lists, the LISTEN URL, prepares."""

from __future__ import annotations

import pytest

from infra.db.session import connect_kwargs
from infra.settings import Settings, SettingsError, load_settings


def test_several_broker_urls_are_taken_in_order() -> None:
    settings = load_settings(rabbit_url="amqp://a:5672/, amqp://b:5673/,,amqp://c/")
    assert settings.rabbit_urls == ["amqp://a:5672/", "amqp://b:5673/", "amqp://c/"]


def test_a_bad_url_in_a_list_is_refused() -> None:
    with pytest.raises(SettingsError, match="CHECKOUT_RABBIT_URL"):
        load_settings(rabbit_url="amqp://a:5672/,http://b/")


def test_the_relay_listens_on_the_database_url_unless_told() -> None:
    plain = load_settings(database_url="postgresql://pooler:6432/checkout")
    assert plain.listen_url == "postgresql+psycopg://pooler:6432/checkout"
    direct = load_settings(
        database_url="postgresql://pooler:6432/checkout",
        database_listen_url="postgres://db:5432/checkout",
    )
    assert direct.listen_url == "postgresql+psycopg://db:5432/checkout"


def test_a_bad_listen_url_is_refused() -> None:
    with pytest.raises(SettingsError, match="CHECKOUT_DATABASE_LISTEN_URL"):
        load_settings(database_listen_url="mysql://db/checkout")


def test_no_server_side_prepares_unless_told() -> None:
    assert connect_kwargs(Settings()) == {"prepare_threshold": None}
    assert connect_kwargs(load_settings(database_prepare=True)) == {}
