"""One RabbitMQ user per part, with the least permissions it needs: the single source of truth.

RabbitMQ grants a user, per virtual host, three regular expressions over resource names
(exchanges and queues alike; the default exchange is named ``amq.default``):

- **configure**: declare (non-passively, even something that already exists with the
  same arguments) and delete;
- **write**: publish to an exchange; be the queue in a ``queue.bind``;
- **read**: consume or ``basic.get`` from a queue; be the exchange in a ``queue.bind``.

A passive declare (does it exist, how deep is it) needs nothing. Declaring a queue that
has an ``x-dead-letter-exchange`` also needs, when the queue does not exist yet, read on
the queue and write on the dead-letter exchange (ours is the default exchange).

Who does what (names from ``infra.messaging.topology``, ``{ns}`` the namespace):

=========  =====================================================================
api        connects for its readiness check only; never publishes or reads
relay      publishes outbox rows to ``{ns}.orders`` and ``{ns}.internal``
saga       consumes ``{ns}.payment``, ``{ns}.refund`` and ``{ns}.production-cancel``
           (each step applies its outcome itself, in the database); retry and
           dead-letter copies go to ``{ns}.<q>.wait.<ms>`` / ``{ns}.<q>.dlq`` through
           the default exchange
invoice,   each consumes ``{ns}.<name>``; retry and dead-letter copies through the
email,     default exchange
production
operator   ``checkout dlq ...`` and ``checkout trace``: reads the ``.dlq`` queues
           (``basic.get``, unacked), replays through the default exchange; reads
           the event log (``checkout events list|backfill``, which copies through the
           default exchange)
setup      declares the whole topology on a fresh broker (``checkout up``, compose's
           ``broker-setup``): configure on everything, plus what creating the queues
           with a dead-letter exchange and binding them requires
=========  =====================================================================

**Parts still declare the topology at start.** Every part runs ``declare_topology``
when it starts (on a connection of its own, ``declare_apart``), so with
``parts_declare=True`` (the default, what compose uses) each of relay, saga and the
consumers gets configure on the namespace's own exchanges and queues, write on the
queues it binds and read on the two exchanges. Creating a missing queue is left to the
setup user, which runs first: the parts only re-declare what exists, so none of them
needs read on another part's queue. ``parts_declare=False`` is the tighter model for when
the parts stop declaring (or declare passively): no configure at all, write only where
they publish, read only what they consume. ``docs/broker-users.md`` has the table, the
reasons and what the permissions do not protect (the default exchange).

Passwords are never part of this model. ``--format rabbitmqctl`` prints a script that
reads each password from ``CHECKOUT_RABBIT_PASSWORD_<PART>``; ``--format definitions``
writes a RabbitMQ definitions document with salted SHA-256 hashes of those variables, or,
with ``--dev-passwords``, of the well-known development passwords (each user's password
is its name) that compose uses::

    python -m infra.messaging.permissions --namespace checkout --format rabbitmqctl
    python -m infra.messaging.permissions --namespace checkout --format definitions \\
        --dev-passwords > deploy/rabbitmq/definitions.json
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from infra.messaging.topology import Topology

VHOST = "/"
DEFAULT_EXCHANGE = "amq.default"
HASHING_ALGORITHM = "rabbit_password_hashing_sha256"
PASSWORD_ENV_PREFIX = "CHECKOUT_RABBIT_PASSWORD_"  # noqa: S105 (a variable name)
NOTHING = "^$"

# Every part with a user of its own, in the order they are listed everywhere.
PARTS = ("api", "relay", "saga", "invoice", "email", "production", "operator", "setup")
CONSUMER_PARTS = ("invoice", "email", "production")


@dataclass(frozen=True)
class Permissions:
    """The three regular expressions RabbitMQ matches resource names against."""

    configure: str
    write: str
    read: str


@dataclass(frozen=True)
class BrokerUser:
    """One part's broker identity: its user, tags, permissions on the vhost, and why."""

    part: str
    name: str
    permissions: Permissions
    tags: tuple[str, ...]
    why: str

    @property
    def password_env(self) -> str:
        """The variable `--format rabbitmqctl` and `definitions` read its password from."""
        return PASSWORD_ENV_PREFIX + self.part.upper()

    @property
    def dev_password(self) -> str:
        """The well-known development password (compose): the user's name."""
        return self.name


def user_name(namespace: str, part: str) -> str:
    """The broker user of `part` in `namespace`, e.g. ``checkout-relay``."""
    return f"{namespace}-{part}"


def _group(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else "(" + "|".join(items) + ")"


def _pattern(namespace: str, names: Sequence[str], *, default_exchange: bool = False) -> str:
    """Anchored regex for `names` (regex fragments after ``{namespace}.``)."""
    alternatives = [re.escape(DEFAULT_EXCHANGE)] if default_exchange else []
    if names:
        alternatives.append(re.escape(namespace) + r"\." + _group(_unique(names)))
    return "^" + _group(alternatives) + "$" if alternatives else NOTHING


def _unique(items: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(items))


def broker_users(namespace: str, *, parts_declare: bool = True) -> tuple[BrokerUser, ...]:
    """Each part's user and permissions in `namespace`, in the order of `PARTS`.

    `parts_declare`: the parts run `declare_topology` at start (what the code does
    today), so they need configure on the namespace's resources and the rights a
    `queue.bind` takes; the setup user still creates the queues first.
    """
    topology = Topology(namespace, ())
    keys = list(topology.queues)  # payment, refund, production-cancel, invoice, email, ...
    exchanges = ["orders", "internal"]
    event_log = r"orders\.log"
    everything = [*exchanges, event_log, _group(keys) + r"(\.dlq|\.wait\.[0-9]+)?"]
    bound_queues = [event_log, *keys]  # the queues `declare_topology` binds
    # Queues declared with a dead-letter exchange: creating one needs read on it.
    with_dlx = [_group(keys) + r"(\.wait\.[0-9]+)?"]
    dlqs = [_group(keys) + r"\.dlq"]

    def part_rights(write: list[str], read: list[str], *, default_exchange: bool) -> Permissions:
        if parts_declare:
            return Permissions(
                configure=_pattern(namespace, everything),
                write=_pattern(namespace, write + bound_queues, default_exchange=default_exchange),
                read=_pattern(namespace, read + exchanges),
            )
        return Permissions(
            configure=NOTHING,
            write=_pattern(namespace, write, default_exchange=default_exchange),
            read=_pattern(namespace, read),
        )

    declaring = (
        " Configure on the namespace's exchanges and queues, write on the queues it binds "
        "and read on the exchanges: it re-declares the topology at start."
        if parts_declare
        else ""
    )
    users = [
        BrokerUser(
            "api",
            user_name(namespace, "api"),
            Permissions(NOTHING, NOTHING, NOTHING),
            (),
            "Connects for /health/ready only; a checkout writes an outbox row, never a "
            "message. Nothing to configure, publish or read.",
        ),
        BrokerUser(
            "relay",
            user_name(namespace, "relay"),
            part_rights(exchanges, [], default_exchange=False),
            (),
            f"Publishes outbox rows to {namespace}.orders and {namespace}.internal; reads "
            f"the .dlq depths passively (no right needed). No default exchange.{declaring}",
        ),
        BrokerUser(
            "saga",
            user_name(namespace, "saga"),
            part_rights([], ["payment", "refund", "production-cancel"], default_exchange=True),
            (),
            f"Consumes {namespace}.payment, {namespace}.refund and "
            f"{namespace}.production-cancel; each step applies its outcome in the "
            f"database; retry and dead-letter copies go through amq.default. Publishes to no "
            f"exchange of ours (its events and commands go through the outbox).{declaring}",
        ),
    ]
    for name in CONSUMER_PARTS:
        users.append(
            BrokerUser(
                name,
                user_name(namespace, name),
                part_rights([], [name], default_exchange=True),
                (),
                f"Consumes {namespace}.{name}; retry and dead-letter copies go through "
                f"amq.default. Publishes to no exchange of ours.{declaring}",
            )
        )
    users += [
        BrokerUser(
            "operator",
            user_name(namespace, "operator"),
            Permissions(
                configure=NOTHING,
                write=_pattern(namespace, [], default_exchange=True),
                read=_pattern(namespace, [*dlqs, event_log]),
            ),
            ("management",),
            "checkout dlq list/show/replay/purge and checkout trace: reads the .dlq queues "
            "(basic.get, unacked), replays through amq.default; checkout events "
            "list/backfill: reads the event log, backfills through amq.default; the "
            "management tag lets it use the UI with these same rights.",
        ),
        BrokerUser(
            "setup",
            user_name(namespace, "setup"),
            Permissions(
                configure=_pattern(namespace, everything),
                write=_pattern(namespace, bound_queues, default_exchange=True),
                read=_pattern(namespace, [*with_dlx, *exchanges]),
            ),
            (),
            "Declares the topology on a fresh broker before the parts start. Creating a "
            "queue with a dead-letter exchange needs read on it and write on amq.default; "
            "binding needs write on the queue and read on the exchange.",
        ),
    ]
    return tuple(users)


# ----------------------------------------------------------------------------- renderers


def password_hash(password: str, salt: bytes) -> str:
    """RabbitMQ's `rabbit_password_hashing_sha256`: base64(salt + sha256(salt + password))."""
    if len(salt) != 4:
        raise ValueError("RabbitMQ's password hashes use a 4-byte salt")
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def dev_salt(user: BrokerUser) -> bytes:
    """A fixed salt for a development password, so the generated file is reproducible."""
    return hashlib.sha256(f"checkout-dev-salt:{user.name}".encode()).digest()[:4]


def render_definitions(
    users: Sequence[BrokerUser],
    passwords: Mapping[str, str] | None = None,
    *,
    vhost: str = VHOST,
    with_vhost: bool = True,
) -> str:
    """A RabbitMQ definitions document (vhost, users, permissions) as JSON text.

    `passwords` maps a part to its password, hashed with a random salt; without it the
    well-known development passwords are hashed with a fixed salt (reproducible output,
    what compose loads). A broker that loads definitions at boot creates no default user
    and no default vhost, so the vhost is listed too; `with_vhost=False` leaves it out
    (importing it into a running broker would reset the vhost's description and tags).
    """
    document: dict[str, list[dict[str, object]]] = {
        "vhosts": [{"name": vhost}] if with_vhost else [],
        "users": [
            {
                "name": user.name,
                "password_hash": (
                    password_hash(user.dev_password, dev_salt(user))
                    if passwords is None
                    else password_hash(passwords[user.part], os.urandom(4))
                ),
                "hashing_algorithm": HASHING_ALGORITHM,
                "tags": list(user.tags),
            }
            for user in users
        ],
        "permissions": [
            {
                "user": user.name,
                "vhost": vhost,
                "configure": user.permissions.configure,
                "write": user.permissions.write,
                "read": user.permissions.read,
            }
            for user in users
        ],
    }
    if not with_vhost:
        del document["vhosts"]
    return json.dumps(document, indent=2) + "\n"


def render_rabbitmqctl(users: Sequence[BrokerUser], *, vhost: str = VHOST) -> str:
    """A POSIX shell script that creates or updates every user with `rabbitmqctl`.

    Passwords come from `CHECKOUT_RABBIT_PASSWORD_<PART>` and reach rabbitmqctl on its
    standard input, never on a command line.
    """
    q = shlex.quote
    lines = [
        "#!/bin/sh",
        "# Generated by `python -m infra.messaging.permissions`; see docs/broker-users.md.",
        "# Run where rabbitmqctl reaches the broker node. Idempotent.",
        "set -eu",
        *(f': "${{{u.password_env}:?set the password of broker user {u.name}}}"' for u in users),
    ]
    for u in users:
        p = u.permissions
        lines += [
            "",
            f"# {u.part}",
            f"if rabbitmqctl -q list_users | cut -f1 | grep -qxF {q(u.name)}; then",
            f'  printf %s "${u.password_env}" | rabbitmqctl -q change_password {q(u.name)}',
            "else",
            f'  printf %s "${u.password_env}" | rabbitmqctl -q add_user {q(u.name)}',
            "fi",
            f"rabbitmqctl -q set_user_tags {q(u.name)}" + "".join(f" {q(t)}" for t in u.tags),
            f"rabbitmqctl -q set_permissions -p {q(vhost)} {q(u.name)} "
            f"{q(p.configure)} {q(p.write)} {q(p.read)}",
        ]
    return "\n".join(lines) + "\n"


def render_table(users: Sequence[BrokerUser]) -> str:
    """A Markdown table of the users and their permissions (docs/broker-users.md)."""

    def cell(text: str) -> str:
        return "`" + text.replace("|", "\\|") + "`"

    rows = [
        "| part | user | configure | write | read |",
        "|---|---|---|---|---|",
    ]
    for u in users:
        p = u.permissions
        rows.append(
            f"| {u.part} | `{u.name}` | {cell(p.configure)} | {cell(p.write)} | {cell(p.read)} |"
        )
    return "\n".join(rows) + "\n"


# ---------------------------------------------------------------------------- entry point


def passwords_from_env(users: Sequence[BrokerUser], environ: Mapping[str, str]) -> dict[str, str]:
    """Each part's password from `CHECKOUT_RABBIT_PASSWORD_<PART>`; KeyError names the unset."""
    missing = [u.password_env for u in users if not environ.get(u.password_env)]
    if missing:
        raise KeyError(", ".join(missing))
    return {u.part: environ[u.password_env] for u in users}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.messaging.permissions",
        description="Print the RabbitMQ users of each part and their permissions.",
    )
    parser.add_argument(
        "--namespace",
        default=os.environ.get("CHECKOUT_NAMESPACE", "checkout"),
        help="prefix of every exchange and queue (default: $CHECKOUT_NAMESPACE or checkout)",
    )
    parser.add_argument(
        "--format",
        choices=("rabbitmqctl", "definitions", "table"),
        default="rabbitmqctl",
        help="a rabbitmqctl script, a definitions document, or a Markdown table",
    )
    parser.add_argument(
        "--dev-passwords",
        action="store_true",
        help="definitions: hash the development passwords (each user's name), as compose "
        "does, instead of reading CHECKOUT_RABBIT_PASSWORD_<PART>",
    )
    parser.add_argument(
        "--no-parts-declare",
        dest="parts_declare",
        action="store_false",
        help="the tighter model for parts that no longer declare the topology at start",
    )
    args = parser.parse_args(argv)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", args.namespace):
        parser.error(f"not a namespace: {args.namespace!r}")
    users = broker_users(args.namespace, parts_declare=args.parts_declare)
    if args.format == "rabbitmqctl":
        text = render_rabbitmqctl(users)
    elif args.format == "table":
        text = render_table(users)
    else:
        try:
            passwords = None if args.dev_passwords else passwords_from_env(users, os.environ)
        except KeyError as exc:
            parser.error(f"set {exc.args[0]} (or pass --dev-passwords for the development ones)")
        text = render_definitions(users, passwords)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
