"""The one settings object: read from the environment (and `.env`) at start-up, passed in.

Every process builds its parts from a `Settings`; nothing reads the environment later.
A bad value stops the process with one line naming the variable (see `load_settings`).
"""

from __future__ import annotations

import re
import sys
from decimal import Decimal, InvalidOperation
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlsplit, urlunsplit

from limits import RateLimitItem, parse_many
from pydantic import AnyUrl, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

ENV_PREFIX = "CHECKOUT_"

# What the URL settings accept. SQLAlchemy knows `postgresql` (its default driver
# differs by version) but not `postgres`; both are stored as `postgresql+psycopg`, the
# driver the engines are built with (`infra.db.session`, `infra.db.migrate`).
DATABASE_SCHEMES = ("postgresql+psycopg", "postgresql", "postgres")
DATABASE_DRIVER = "postgresql+psycopg"
DATABASE_EXAMPLE = "postgresql+psycopg://user:password@host:5432/checkout"
RABBIT_SCHEMES = ("amqp", "amqps")
RABBIT_EXAMPLE = "amqp://user:password@host:5672/ (or amqps://)"
_BAD_PORT = "the port is not a number from 1 to 65535"


def _port_in_range(port: int | None) -> bool:
    return port is None or 1 <= port <= 65535


def check_database_url(url: str) -> str:
    """`url` as a PostgreSQL URL with the psycopg driver; ValueError saying what is wrong.

    `postgresql://` and `postgres://` are rewritten to `postgresql+psycopg://`, the rest
    of the URL kept as given. The messages never repeat the URL: it may carry a password.
    """
    expected = f"expected {DATABASE_EXAMPLE}"
    try:
        parsed = make_url(url)
    except ArgumentError:
        parsed = None
    except ValueError:  # SQLAlchemy found a port that is not a number
        raise ValueError(f"{_BAD_PORT}; {expected}") from None
    if parsed is None or parsed.drivername not in DATABASE_SCHEMES:
        raise ValueError(
            f"not a PostgreSQL URL; {expected} (postgresql:// and postgres:// work too)"
        )
    # No host is libpq's default: the local socket (`postgresql:///checkout`).
    if not _port_in_range(parsed.port):
        raise ValueError(f"{_BAD_PORT}; {expected}")
    if not parsed.database:
        raise ValueError(f"names no database; {expected}")
    if parsed.drivername == DATABASE_DRIVER:
        return url
    return f"{DATABASE_DRIVER}://{url.split('://', 1)[1]}"


def check_rabbit_url(url: str) -> str:
    """`url` if it is an AMQP URL aio-pika can connect to; ValueError saying what is wrong.

    The messages never repeat the URL: it may carry a password.
    """
    expected = f"expected {RABBIT_EXAMPLE}"
    try:
        parsed = urlsplit(url)
    except ValueError:  # a broken [IPv6] address
        raise ValueError(f"not a valid URL; {expected}") from None
    if parsed.scheme not in RABBIT_SCHEMES or not url.partition(":")[2].startswith("//"):
        raise ValueError(f"not an AMQP URL; {expected}")
    try:
        port = parsed.port
    except ValueError:
        raise ValueError(f"{_BAD_PORT}; {expected}") from None
    if not parsed.hostname:
        raise ValueError(f"names no host; {expected}")
    if not _port_in_range(port):
        raise ValueError(f"{_BAD_PORT}; {expected}")
    return url


def split_urls(value: str) -> list[str]:
    """The URLs of a comma-separated list (one URL is a list of one); blanks dropped."""
    return [part.strip() for part in value.split(",") if part.strip()]


def redact_url(value: str) -> str | None:
    """`value` with any password replaced by `***`, or None if that cannot be done for sure.

    Only a `scheme://...` URL whose every `@` lies in its network location is shown: a
    value that is not such a URL (a libpq `key=value` string, `user:secret`, a password
    containing `/`, `?` or `#`) may hide a password anywhere.
    """
    try:
        parts = urlsplit(value)
    except ValueError:
        return None
    if "://" not in value or not parts.netloc or "@" in parts.path + parts.query + parts.fragment:
        return None
    userinfo, at, hostinfo = parts.netloc.rpartition("@")
    if ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":***"
    # libpq also takes `password` (and `sslpassword`) as query parameters.
    query = re.sub(r"(?i)(^|[&;])([^&;=]*password=)[^&;]*", r"\1\2***", parts.query)
    return urlunsplit(parts._replace(netloc=f"{userinfo}{at}{hostinfo}", query=query))


def _default_log_format() -> Literal["console", "json"]:
    return "console" if sys.stderr.isatty() else "json"


_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


class Settings(BaseSettings):
    """Everything a process of the checkout system can be told from outside."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
    )

    database_url: SecretStr = SecretStr("postgresql+psycopg://postgres@127.0.0.1:5432/checkout")
    # Where the relay LISTENs for new outbox rows: a connection straight to PostgreSQL,
    # since a pooler in transaction mode drops LISTEN/NOTIFY silently. Unset: database_url.
    database_listen_url: SecretStr | None = None
    # Server-side prepared statements (psycopg's, after five runs of a statement): "auto"
    # prepares on the hot paths' connections that reach PostgreSQL itself, never through
    # a pooler or proxy (`infra.db.preparation`); true: everywhere; false: nowhere.
    database_prepare: Literal["auto"] | bool = "auto"
    # One AMQP URL, or several separated by commas (the nodes of a cluster): a part
    # connects to the first that answers and, once its connection is lost, tries the
    # next ones in turn (`infra.messaging.connect`).
    rabbit_url: SecretStr = SecretStr("amqp://guest:guest@127.0.0.1:5672/")
    namespace: str = Field(default="checkout", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")

    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=1, le=65535)
    mocks_host: str = "127.0.0.1"
    mocks_port: int = Field(default=8001, ge=1, le=65535)
    payment_url: AnyUrl | None = None
    email_url: AnyUrl | None = None
    production_url: AnyUrl | None = None

    # Health and metrics endpoint of a worker (relay, saga, consumers). Unset or 0: a
    # port free at start (`checkout up` picks one per part and lists them); a number N:
    # that port (under `checkout up`: N for the relay, N+1 for the saga, and so on).
    health_host: str = "127.0.0.1"
    health_port: int | None = Field(default=None, ge=0, le=65535)

    log_format: Literal["console", "json"] = Field(default_factory=_default_log_format)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    # Simulated services: random 503s and added latency for load and fault tests.
    mock_failure_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    mock_latency_ms: int = Field(default=0, ge=0, le=60_000)

    # Messaging. Delays (seconds) between attempts of a failed message; after the
    # last one it is dead-lettered. The default dead-letters a transient failure
    # within about a minute of its first attempt.
    retry_delays: Annotated[tuple[float, ...], NoDecode] = (1.0, 4.0, 12.0, 30.0)
    retry_jitter: float = Field(default=0.2, ge=0.0, lt=1.0)
    prefetch: int = Field(default=50, ge=1, le=1000)

    # Outbox relay: rows claimed per batch, and the poll interval used when no
    # NOTIFY arrives (the fallback wake-up).
    relay_batch_size: int = Field(default=200, ge=1, le=5000)
    relay_poll_interval: float = Field(default=1.0, gt=0, le=60)

    # Outgoing HTTP calls to the payment, email and production services.
    http_timeout: float = Field(default=3.0, gt=0, le=120)
    http_attempts: int = Field(default=3, ge=1, le=10)

    # Circuit breaker in front of each external service: opens after this many
    # consecutive transient failures, and lets one call through after the pause.
    breaker_threshold: int = Field(default=5, ge=1, le=1000)
    breaker_pause: float = Field(default=10.0, gt=0, le=600)

    # Deadlines (CONTRACT.md section 8): seconds a checkout may stay PAYMENT_PENDING
    # before the saga asks the Payment Service what became of its charge.
    payment_deadline: float = Field(default=120.0, gt=0, le=7 * 24 * 3600)

    db_pool_size: int = Field(default=10, ge=1, le=200)

    # How long after its payment an order may still be cancelled with a refund.
    refund_window_days: int = Field(default=30, ge=0, le=3650)
    # The event log (`{ns}.orders.log`, a stream): days an event is kept. RabbitMQ drops
    # whole segments once every event in them is older.
    event_log_days: int = Field(default=30, ge=1, le=3650)

    # Security. Requests per API key and API process, in the `limits` notation
    # ("100/second", "1000/minute", several separated by ";").
    api_rate_limit: str = "100/second"
    # Where `checkout up` keeps the development key it creates on first start.
    dev_key_file: Path = Path(".checkout/dev-api-key")
    # The key `checkout demo` (and other clients of the API in this package) send;
    # unset: the development key in `dev_key_file`.
    api_key: SecretStr | None = None

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: SecretStr) -> SecretStr:
        return SecretStr(check_database_url(value.get_secret_value()))

    @field_validator("database_listen_url")
    @classmethod
    def _check_database_listen_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        return SecretStr(check_database_url(value.get_secret_value()))

    @field_validator("database_prepare", mode="before")
    @classmethod
    def _parse_prepare(cls, value: object) -> object:
        if isinstance(value, bool):
            return value
        word = str(value).strip().lower()
        if word == "auto":
            return "auto"
        if word in _TRUE or word in _FALSE:
            return word in _TRUE
        raise ValueError(
            f"{value!r} is not a choice: auto (prepare where the connection reaches "
            "PostgreSQL itself), true or false"
        )

    @field_validator("rabbit_url")
    @classmethod
    def _check_rabbit_url(cls, value: SecretStr) -> SecretStr:
        for url in split_urls(value.get_secret_value()) or [value.get_secret_value()]:
            check_rabbit_url(url)
        return value

    @property
    def rabbit_urls(self) -> list[str]:
        """The broker URLs, in the order given (one, or a cluster's nodes)."""
        return split_urls(self.rabbit_url.get_secret_value())

    @property
    def listen_url(self) -> str:
        """The database URL the relay LISTENs on (`database_listen_url`, else `database_url`)."""
        chosen = self.database_listen_url or self.database_url
        return chosen.get_secret_value()

    @field_validator("retry_delays", mode="before")
    @classmethod
    def _parse_delays(cls, value: object) -> object:
        if isinstance(value, str):
            parts = [p.strip() for p in value.split(",") if p.strip()]
            try:
                return tuple(Decimal(p) for p in parts)
            except InvalidOperation:
                raise ValueError("give comma-separated seconds, e.g. '1,4,12,30'") from None
        return value

    @field_validator("retry_delays")
    @classmethod
    def _check_delays(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not value or any(d <= 0 for d in value):
            raise ValueError("give one or more positive numbers of seconds, e.g. '1,4,12,30'")
        return tuple(float(d) for d in value)

    @field_validator("api_rate_limit")
    @classmethod
    def _check_rate_limit(cls, value: str) -> str:
        try:
            items = parse_many(value)
        except ValueError:
            items = []
        if not items or any(item.amount < 1 for item in items):
            raise ValueError("give a rate such as '100/second' or '20/second;1000/minute'")
        return value

    @property
    def rate_limits(self) -> list[RateLimitItem]:
        return parse_many(self.api_rate_limit)

    @cached_property
    def mocks_base_url(self) -> str:
        return f"http://{self.mocks_host}:{self.mocks_port}"

    @cached_property
    def payment_base_url(self) -> str:
        return str(self.payment_url or self.mocks_base_url).rstrip("/")

    @cached_property
    def email_base_url(self) -> str:
        return str(self.email_url or self.mocks_base_url).rstrip("/")

    @cached_property
    def production_base_url(self) -> str:
        return str(self.production_url or self.mocks_base_url).rstrip("/")

    @cached_property
    def api_base_url(self) -> str:
        return f"http://{self.api_host}:{self.api_port}"


class SettingsError(Exception):
    """A setting is missing or malformed; the message names the variable."""


def _is_secret(field: str) -> bool:
    info = Settings.model_fields.get(field)
    if info is None:
        return False
    annotation = info.annotation
    return annotation is SecretStr or SecretStr in get_args(annotation)


def _shown(field: str, value: Any) -> str | None:
    """How the bad value is quoted in the message: a secret's password never is."""
    if not _is_secret(field):
        return repr(value)
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    redacted = redact_url(value) if isinstance(value, str) else None
    return None if redacted is None else repr(redacted)


def load_settings(**overrides: object) -> Settings:
    """Read the settings, turning pydantic's report into one line naming the first bad variable.

    The line says what is wrong and quotes the value, except a secret's: a URL is quoted
    with its password masked (`amqp://guest:***@host/`), anything else not at all.
    """
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "?"
        error = first.get("ctx", {}).get("error")
        # Our validators' own words, without pydantic's "Value error, " in front.
        reason = str(error) if first["type"] == "value_error" and error else first["msg"]
        shown = _shown(field, first.get("input"))
        got = f" (got {shown})" if shown is not None else ""
        raise SettingsError(f"{ENV_PREFIX}{field.upper()}: {reason}{got}") from None
