"""The end-of-run check: no checkout lost, no effect missing or done twice.

Run while the system is still up (it reads the simulated services' records and the
workers' metrics), after the last checkout has had time to finish:

- every checkout the API accepted exists and is final (PAID or FAILED);
- every PAID order has exactly one invoice, one e-mail row and one production row, all
  from the same `OrderPaid` message; no other order has any;
- the simulated services recorded one payment per checkout, and one e-mail and one
  production order per `OrderPaid` message id, each for a distinct PAID order;
- no dead-lettered message in any `.dlq` queue of the namespace.

With `--copies 2` this is the scale-out proof: two relays, two sagas and two of each
consumer side by side, and still exactly one of everything. The workers' own count of
duplicates they dropped (`checkout_consumer_messages_total{outcome="duplicate"}`) is
reported as information: a duplicate that was delivered and dropped is not a fault.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterable
from typing import Any

import aio_pika
import httpx
import psycopg

from bench import db
from bench.load import Checkout
from infra.messaging.topology import Topology
from infra.settings import Settings

MOCK_PATHS = {  # with each stored answer's status code
    "payments": "/mock/payments?include=status_code",
    "emails": "/mock/emails?include=status_code",
    "production": "/mock/production/orders?include=status_code",
}


async def _rows(conn: psycopg.AsyncConnection[Any], query: str) -> list[tuple[Any, ...]]:
    cursor = await conn.execute(query)
    return list(await cursor.fetchall())


async def exactly_once(
    conninfo: str,
    mocks: str,
    settings: Settings,
    records: Iterable[Checkout],
    copies: int,
    metrics_urls: Iterable[str] = (),
) -> dict[str, Any]:
    problems: list[str] = []
    async with await db.connect(conninfo, autocommit=True) as conn:
        checkouts = await _rows(
            conn, "SELECT checkout_id::text, order_id::text, state FROM checkouts"
        )
        effects = {
            table: await _rows(
                conn,
                f"SELECT order_id::text, source_message_id::text FROM {table}",  # noqa: S608
            )
            for table in ("invoices", "email_notifications", "production_submissions")
        }
        paid_orders = {
            r[0] for r in await _rows(conn, "SELECT order_id::text FROM orders WHERE status='PAID'")
        }

    states = Counter(state for _, _, state in checkouts)
    by_id = {cid: (oid, state) for cid, oid, state in checkouts}
    unfinished = sum(1 for _, _, state in checkouts if state not in ("PAID", "FAILED"))
    if unfinished:
        problems.append(
            f"{unfinished} checkouts not final when the run ended (a backlog the system had "
            "not worked off, or lost messages): the comparisons with the services' records "
            "below are skipped, since effects were still being applied"
        )
    accepted = [r for r in records if r.accepted]
    for record in accepted:
        if record.checkout_id not in by_id:
            problems.append(f"accepted checkout {record.checkout_id} is not in the database")
    paid_checkout_orders = {oid for oid, state in by_id.values() if state == "PAID"}
    if paid_checkout_orders != paid_orders:
        problems.append(
            f"{len(paid_orders ^ paid_checkout_orders)} orders whose status disagrees "
            "with their checkout"
        )

    message_of: dict[str, set[str]] = {}
    for table, rows in effects.items():
        per_order = Counter(oid for oid, _ in rows)
        for oid, n in per_order.items():
            if n > 1:
                problems.append(f"{table}: {n} rows for order {oid}")
        for oid, message_id in rows:
            if oid not in paid_orders:
                problems.append(f"{table}: a row for order {oid}, which is not PAID")
            message_of.setdefault(oid, set()).add(message_id)
        missing = paid_orders - set(per_order)
        if missing and not unfinished:
            problems.append(f"{table}: {len(missing)} PAID orders without a row")
    for oid, ids in message_of.items():
        if len(ids) > 1:
            problems.append(f"order {oid}: effects from {len(ids)} different OrderPaid messages")
    paid_messages = {next(iter(ids)) for ids in message_of.values() if len(ids) == 1}

    services: dict[str, Any] = {}
    async with httpx.AsyncClient(base_url=mocks, timeout=60) as client:
        for name, path in MOCK_PATHS.items() if not unfinished else ():
            entries = (await client.get(path)).json()
            keys = Counter(e["idempotency_key"] for e in entries)
            services[name] = {
                "entries": len(entries),
                "attempts": sum(e["attempts"] for e in entries),
                "not_successful": sum(1 for e in entries if (e["status_code"] or 500) >= 300),
            }
            repeated = [k for k, n in keys.items() if n > 1]
            if repeated or None in keys:
                problems.append(f"{name}: {len(repeated)} keys recorded twice, or no key")
            expected = set(by_id) if name == "payments" else paid_messages
            if set(keys) != expected:
                problems.append(
                    f"{name}: {len(set(keys) - expected)} unexpected and "
                    f"{len(expected - set(keys))} missing idempotency keys"
                )
            if name == "production":
                orders = Counter(e["request"].get("order_id") for e in entries)
                twice = [o for o, n in orders.items() if n > 1]
                if twice:
                    problems.append(f"production: {len(twice)} orders submitted twice")
                if set(orders) != paid_orders:
                    problems.append("production: submitted orders differ from the PAID orders")

    dead = await _dead_letters(settings)
    for queue, count in dead.items():
        if count:
            problems.append(f"{queue}: {count} dead-lettered messages")

    return {
        "ok": not problems,
        "copies": copies,
        "accepted": len(accepted),
        "checkouts": len(checkouts),
        "states": dict(states),
        "effect_rows": {table: len(rows) for table, rows in effects.items()},
        "services": services,
        "dead_letters": dead,
        "duplicates_dropped": await _duplicates(metrics_urls),
        "problems": problems[:50],
        "problem_count": len(problems),
    }


async def _dead_letters(settings: Settings) -> dict[str, int]:
    topology = Topology.from_settings(settings)
    counts: dict[str, int] = {}
    connection = await aio_pika.connect(settings.rabbit_url.get_secret_value())
    async with connection:
        for queue in topology.queues.values():
            channel = await connection.channel()
            try:
                declared = await channel.declare_queue(queue.dlq, passive=True)
                counts[queue.dlq] = declared.declaration_result.message_count or 0
            except aio_pika.exceptions.ChannelClosed:
                counts[queue.dlq] = 0
            finally:
                with contextlib.suppress(Exception):
                    await channel.close()
    return counts


async def _duplicates(urls: Iterable[str]) -> dict[str, float]:
    """Sum of `checkout_consumer_messages_total{outcome="duplicate"}` by queue, over workers."""
    found: dict[str, float] = {}
    async with httpx.AsyncClient(timeout=5) as client:
        for url in urls:
            with contextlib.suppress(httpx.HTTPError):
                text = (await client.get(url)).text
                for line in text.splitlines():
                    if line.startswith("checkout_consumer_messages_total{") and (
                        'outcome="duplicate"' in line
                    ):
                        labels, value = line.rsplit(" ", 1)
                        queue = labels.split('queue="', 1)[1].split('"', 1)[0]
                        found[queue] = found.get(queue, 0.0) + float(value)
    return found
