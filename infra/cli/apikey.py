"""`checkout apikey ...`: create, list and revoke the API keys (`infra.auth.keys`).

`create` prints the token once: on a terminal with a note on how to use it, on a pipe
(or with `--json`) as one JSON document holding it. Only its hash is stored, so a lost
token cannot be shown again: revoke it and create another. Register it with
`app.add_typer(apikey_app, name="apikey")`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any, TypeVar

import typer
from rich.table import Table
from sqlalchemy.exc import DBAPIError, ProgrammingError
from sqlalchemy.ext.asyncio import AsyncEngine

from infra.auth.keys import (
    ApiKey,
    ApiKeyError,
    Role,
    create_key,
    list_keys,
    revoke_key,
    valid_name,
)
from infra.cli.output import console, err_console, fail, is_terminal, print_json, settings_or_exit
from infra.db.session import create_engine
from infra.settings import Settings

T = TypeVar("T")

apikey_app = typer.Typer(
    name="apikey",
    help="API keys: create (printed once), list, revoke. The API wants "
    "`Authorization: Bearer <key>`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

JsonOpt = Annotated[
    bool, typer.Option("--json", help="One JSON document on stdout (also the default on a pipe).")
]


def _run(settings: Settings, action: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    """Run `action` with an engine; a database problem ends the command with one line."""

    async def main() -> T:
        engine = create_engine(settings, pool_size=1)
        try:
            return await action(engine)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(main())
    except ApiKeyError as exc:
        fail(str(exc))
    except ProgrammingError as exc:
        if "api_keys" in str(exc.orig):
            fail("the database has no api_keys table yet: run `checkout migrate`")
        raise
    except (DBAPIError, OSError) as exc:
        from infra.cli.supervisor import database_error

        fail(str(database_error(settings, exc)))


def _as_json(key: ApiKey) -> dict[str, Any]:
    return {
        "key_id": str(key.key_id),
        "name": key.name,
        "role": key.role.value,
        "token_prefix": key.token_prefix,
        "created_at": key.created_at.isoformat(),
        "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
    }


def _when(at: datetime | None) -> str:
    return at.astimezone().strftime("%Y-%m-%d %H:%M:%S") if at else ""


@apikey_app.command()
def create(
    name: Annotated[
        str,
        typer.Option(
            "--name", help="Who or what uses the key (unique among live keys).", show_default=False
        ),
    ],
    role: Annotated[
        Role,
        typer.Option(
            "--role", help="clerk: orders and checkouts; operator: everything.", show_default=False
        ),
    ],
    json_output: JsonOpt = False,
) -> None:
    """Create a key and print its token (shown only this once)."""
    if not valid_name(name):
        fail(
            f"--name {name!r}: use 1-64 letters, digits and . _ @ - (starting with a letter "
            "or digit), e.g. --name billing-team",
            code=2,
        )
    settings = settings_or_exit()
    made = _run(settings, lambda engine: create_key(engine, name, role))
    if json_output or not is_terminal():
        print_json({**_as_json(made.key), "token": made.token})
        return
    out = console()
    out.print(f"Created API key [bold]{name}[/] ({role.value}). Its token, shown only now:")
    out.print(f"\n  [bold green]{made.token}[/]\n", soft_wrap=True)
    out.print(
        "Send it as [bold]Authorization: Bearer <token>[/]. Only a hash is stored: if it is "
        f"lost, revoke it (checkout apikey revoke {name}) and create another."
    )


@apikey_app.command("list")
def list_(
    all_keys: Annotated[
        bool, typer.Option("--all", help="Revoked keys too.", show_default=False)
    ] = False,
    json_output: JsonOpt = False,
) -> None:
    """The keys (live ones unless --all), oldest first; never their tokens."""
    settings = settings_or_exit()
    keys = _run(settings, lambda engine: list_keys(engine, include_revoked=all_keys))
    if json_output or not is_terminal():
        print_json([_as_json(k) for k in keys])
        return
    if not keys:
        err_console().print(
            "no API keys: `checkout apikey create --name NAME --role clerk` makes one"
        )
        return
    table = Table("name", "role", "token starts", "created", "revoked", "id")
    for key in keys:
        table.add_row(
            key.name,
            key.role.value,
            key.token_prefix + "…",
            _when(key.created_at),
            _when(key.revoked_at) or "-",
            str(key.key_id),
            style="dim" if not key.active else None,
        )
    console().print(table)


@apikey_app.command()
def revoke(
    key: Annotated[
        str,
        typer.Argument(
            metavar="NAME|ID", help="The key's name, id or token start.", show_default=False
        ),
    ],
    json_output: JsonOpt = False,
) -> None:
    """Revoke a key: every API process refuses it from the next request on."""
    settings = settings_or_exit()
    revoked = _run(settings, lambda engine: revoke_key(engine, key))
    if json_output or not is_terminal():
        print_json(_as_json(revoked))
        return
    console().print(
        f"Revoked API key [bold]{revoked.name}[/] ({revoked.role.value}); "
        "it is refused from now on."
    )
