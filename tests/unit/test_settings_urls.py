"""CHECKOUT_DATABASE_URL and CHECKOUT_RABBIT_URL: checked at start, never echoed with a password."""

from __future__ import annotations

import pytest

from infra.settings import SettingsError, load_settings, redact_url

PASSWORD = "s3cr3t-Pw"


def _error(**overrides: object) -> str:
    with pytest.raises(SettingsError) as error:
        load_settings(**overrides)
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("garbage", "not an AMQP URL"),
        ("", "not an AMQP URL"),
        ("http://guest:guest@127.0.0.1:5672/", "not an AMQP URL"),
        ("amqp:guest@127.0.0.1", "not an AMQP URL"),
        ("amqp://guest:x@127.0.0.1:notaport/", "the port is not a number from 1 to 65535"),
        ("amqp://guest:x@127.0.0.1:0/", "the port is not a number from 1 to 65535"),
        ("amqp://guest:x@127.0.0.1:70000/", "the port is not a number from 1 to 65535"),
        ("amqp://guest:x@:5672/", "names no host"),
        ("amqp:///", "names no host"),
        ("amqp://[::1/", "not a valid URL"),
    ],
)
def test_a_bad_rabbit_url_is_refused_naming_the_variable(url: str, reason: str) -> None:
    message = _error(rabbit_url=url)

    assert message.startswith(f"CHECKOUT_RABBIT_URL: {reason}; expected amqp://")


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("garbage", "not a PostgreSQL URL"),
        ("garbage://x:p@", "not a PostgreSQL URL"),
        ("mysql://u:p@127.0.0.1/x", "not a PostgreSQL URL"),
        ("postgresql+asyncpg://u:p@127.0.0.1/x", "not a PostgreSQL URL"),
        ("sqlite:///checkout.db", "not a PostgreSQL URL"),
        ("postgresql://u:p@127.0.0.1:notaport/x", "the port is not a number from 1 to 65535"),
        ("postgresql://u:p@127.0.0.1:70000/x", "the port is not a number from 1 to 65535"),
        ("postgresql+psycopg://postgres@127.0.0.1:5432", "names no database"),
        ("postgresql+psycopg://postgres@127.0.0.1:5432/", "names no database"),
    ],
)
def test_a_bad_database_url_is_refused_naming_the_variable(url: str, reason: str) -> None:
    message = _error(database_url=url)

    assert message.startswith(f"CHECKOUT_DATABASE_URL: {reason}; expected postgresql+psycopg://")


@pytest.mark.parametrize(
    "url",
    [
        "amqp://guest:guest@127.0.0.1:5672/",
        "amqp://guest:guest@127.0.0.1",
        "amqps://user:p%2Fw@rabbit.example.com:5671/vhost?heartbeat=30",
        "amqp://[::1]:5672/",
    ],
)
def test_a_good_rabbit_url_is_kept_as_given(url: str) -> None:
    assert load_settings(rabbit_url=url).rabbit_url.get_secret_value() == url


@pytest.mark.parametrize(
    ("url", "stored"),
    [
        (
            "postgresql+psycopg://postgres@127.0.0.1:5432/checkout",
            "postgresql+psycopg://postgres@127.0.0.1:5432/checkout",
        ),
        # The other two spellings get the driver the engines are built with; the rest stays.
        ("postgresql://u:p%40ss@db:5433/orders", "postgresql+psycopg://u:p%40ss@db:5433/orders"),
        (
            "postgres://u@db/orders?sslmode=require",
            "postgresql+psycopg://u@db/orders?sslmode=require",
        ),
        (
            "postgresql://postgres@/checkout?host=/var/run/postgresql",
            "postgresql+psycopg://postgres@/checkout?host=/var/run/postgresql",
        ),
        # No host at all: libpq's default, the local socket.
        ("postgresql:///checkout", "postgresql+psycopg:///checkout"),
    ],
)
def test_a_good_database_url_is_stored_with_the_psycopg_driver(url: str, stored: str) -> None:
    assert load_settings(database_url=url).database_url.get_secret_value() == stored


@pytest.mark.parametrize(
    ("field", "url", "shown"),
    [
        (
            "rabbit_url",
            f"amqp://guest:{PASSWORD}@127.0.0.1:notaport/",
            "'amqp://guest:***@127.0.0.1:notaport/'",
        ),
        ("rabbit_url", f"http://guest:{PASSWORD}@127.0.0.1/", "'http://guest:***@127.0.0.1/'"),
        (
            "database_url",
            f"mysql://u:{PASSWORD}@127.0.0.1/x",
            "'mysql://u:***@127.0.0.1/x'",
        ),
        ("database_url", f"garbage://x:{PASSWORD}@", "'garbage://x:***@'"),
        (
            "database_url",
            f"postgresql://u@db:notaport/checkout?sslmode=require&password={PASSWORD}",
            "'postgresql://u@db:notaport/checkout?sslmode=require&password=***'",
        ),
        # An @ in the password: the last @ ends it.
        (
            "database_url",
            f"postgresql://u:{PASSWORD}@x@127.0.0.1:bad/checkout",
            "'postgresql://u:***@127.0.0.1:bad/checkout'",
        ),
    ],
)
def test_a_bad_url_is_quoted_with_its_password_masked(field: str, url: str, shown: str) -> None:
    message = _error(**{field: url})

    assert PASSWORD not in message
    assert message.endswith(f" (got {shown})")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        # Not a URL whose password we can find for certain: not quoted at all.
        ("rabbit_url", f"guest:{PASSWORD}@127.0.0.1"),
        ("rabbit_url", f"amqp://guest:{PASSWORD}/x@127.0.0.1:bad/"),
        ("rabbit_url", f"amqp://guest:{PASSWORD}?x@127.0.0.1/"),
        ("rabbit_url", f"amqp://guest:{PASSWORD}#x@127.0.0.1/"),
        ("rabbit_url", PASSWORD),
        ("database_url", f"host=127.0.0.1 user=u password={PASSWORD} dbname=checkout"),
        ("database_url", f"u:{PASSWORD}@127.0.0.1/checkout"),
        ("database_url", f"postgresql://u:{PASSWORD}@[::1/checkout"),
    ],
)
def test_a_secret_that_cannot_be_masked_is_not_quoted(field: str, value: str) -> None:
    message = _error(**{field: value})

    assert PASSWORD not in message
    assert "(got " not in message


def test_other_settings_are_still_quoted_in_pydantics_or_our_words() -> None:
    assert _error(api_port="x").startswith("CHECKOUT_API_PORT: ")
    assert _error(api_port="x").endswith("(got 'x')")
    assert _error(retry_delays="a,b") == (
        "CHECKOUT_RETRY_DELAYS: give comma-separated seconds, e.g. '1,4,12,30' (got 'a,b')"
    )


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("amqp://guest:guest@h:5672/", "amqp://guest:***@h:5672/"),
        ("amqp://guest@h/", "amqp://guest@h/"),
        ("amqp://h/", "amqp://h/"),
        ("postgresql://u:@h/db", "postgresql://u:***@h/db"),
        (
            "postgresql://u@h/db?PASSWORD=x;password=y",
            "postgresql://u@h/db?PASSWORD=***;password=***",
        ),
        (
            "postgresql://u@h/db?sslmode=verify-full&sslpassword=x",
            "postgresql://u@h/db?sslmode=verify-full&sslpassword=***",
        ),
        ("not a url", None),
    ],
)
def test_redact_url(url: str, redacted: str | None) -> None:
    assert redact_url(url) == redacted
