"""`checkout migrate`: create the database if it is missing, then apply every migration."""

from __future__ import annotations

from pathlib import Path

import psycopg
from alembic import command
from alembic.config import Config
from psycopg import sql
from sqlalchemy.engine import make_url

from infra.settings import Settings

MIGRATIONS = Path(__file__).with_name("migrations")


def libpq_url(sqlalchemy_url: str, database: str | None = None) -> str:
    url = make_url(sqlalchemy_url).set(drivername="postgresql")
    if database is not None:
        url = url.set(database=database)
    return url.render_as_string(hide_password=False)


def create_database_if_missing(database_url: str) -> bool:
    """Create the URL's database from the server's `postgres` database; True if created."""
    name = make_url(database_url).database
    if not name:
        raise ValueError("CHECKOUT_DATABASE_URL names no database, e.g. .../checkout")
    with psycopg.connect(libpq_url(database_url, "postgres"), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists:
            return False
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return True


def drop_database(database_url: str) -> None:
    """Drop the URL's database (tests use it to clean up their own)."""
    name = make_url(database_url).database
    if not name:
        raise ValueError("the database URL names no database")
    with psycopg.connect(libpq_url(database_url, "postgres"), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # Alembic's ini interpolation treats % specially.
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def migrate(settings: Settings) -> bool:
    """Bring the database to the newest schema; True if the database was created."""
    url = settings.database_url.get_secret_value()
    created = create_database_if_missing(url)
    command.upgrade(alembic_config(url), "head")
    return created
