"""What the machine can do at all, measured in the same run: the denominators of the report.

- `tx_rate`: transactions per second that insert an order-like row and an outbox-like
  row and commit, from one Python process (psycopg 3 async, a pool of 10 connections,
  10 tasks), into scratch tables it drops afterwards.
- `publish_rate`: persistent messages per second published with publisher confirms by
  aio-pika, `in_flight` unconfirmed at a time, to a scratch quorum queue (the kind the
  system's consumers read) that it deletes afterwards.
- `relay_drain_rate`: the relay process alone: `rows` outbox rows committed at once, the
  time until the relay has published and deleted them all. The rows go to a scratch
  queue bound in the run's own namespace, so nothing consumes them.

Each runs while the system is otherwise idle, before the load phases.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import aio_pika
from psycopg_pool import AsyncConnectionPool

from bench import db
from bench.observe import cpu_delta, cpu_snapshot


async def tx_rate(conninfo: str, seconds: float, tasks: int = 10) -> dict[str, Any]:
    """Two-insert transactions per second with psycopg (see the module docstring)."""
    tag = uuid.uuid4().hex[:8]
    orders, outbox = f"bench_raw_orders_{tag}", f"bench_raw_outbox_{tag}"
    async with await db.connect(conninfo, autocommit=True) as admin:
        await admin.execute(
            f"CREATE TABLE {orders} (id uuid PRIMARY KEY, name text NOT NULL, "
            "amount numeric(12,2) NOT NULL, created_at timestamptz NOT NULL)"
        )
        await admin.execute(
            f"CREATE TABLE {outbox} (id bigserial PRIMARY KEY, message_id uuid NOT NULL UNIQUE, "
            "routing_key text NOT NULL, body text NOT NULL, created_at timestamptz NOT NULL)"
        )
    insert_order = f"INSERT INTO {orders} VALUES (%s, 'raw', 10.00, now())"  # noqa: S608
    insert_outbox = (
        f"INSERT INTO {outbox} (message_id, routing_key, body, created_at) "  # noqa: S608
        "VALUES (%s, 'raw.test', %s, now())"
    )
    body = json.dumps({"order_id": str(uuid.uuid4()), "amount": "10.00", "pad": "x" * 200})
    count = 0
    try:
        async with AsyncConnectionPool(
            conninfo,
            min_size=tasks,
            max_size=tasks,
            open=False,
            kwargs={"prepare_threshold": None},  # unprepared, as in every earlier round
        ) as pool:
            await pool.wait()
            deadline = time.monotonic() + seconds

            async def worker() -> None:
                nonlocal count
                while time.monotonic() < deadline:
                    async with pool.connection() as conn, conn.transaction():
                        await conn.execute(insert_order, (uuid.uuid4(),))
                        await conn.execute(insert_outbox, (uuid.uuid4(), body))
                    count += 1

            started = time.monotonic()
            await asyncio.gather(*(worker() for _ in range(tasks)))
            elapsed = time.monotonic() - started
    finally:
        async with await db.connect(conninfo, autocommit=True) as admin:
            await admin.execute(f"DROP TABLE IF EXISTS {orders}, {outbox}")
    return {
        "what": f"psycopg async, pool {tasks}, {tasks} tasks: INSERT order + INSERT outbox, COMMIT",
        "seconds": round(elapsed, 2),
        "transactions": count,
        "per_s": round(count / elapsed, 1),
    }


async def publish_rate(url: str, seconds: float, in_flight: int = 100) -> dict[str, Any]:
    """Persistent confirmed publishes per second with aio-pika (see the module docstring)."""
    queue_name = f"bench.raw.{uuid.uuid4().hex[:8]}"
    body = json.dumps({"order_id": str(uuid.uuid4()), "amount": "10.00", "pad": "x" * 300})
    connection = await aio_pika.connect(url)
    count = 0
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await channel.declare_queue(queue_name, durable=True, arguments={"x-queue-type": "quorum"})
        try:
            exchange = channel.default_exchange
            window = asyncio.Semaphore(in_flight)
            deadline = time.monotonic() + seconds
            pending: set[asyncio.Task[Any]] = set()

            async def publish_one() -> None:
                nonlocal count
                try:
                    await exchange.publish(
                        aio_pika.Message(
                            body.encode(),
                            message_id=str(uuid.uuid4()),
                            content_type="application/json",
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        ),
                        routing_key=queue_name,
                        mandatory=True,
                    )
                    count += 1
                finally:
                    window.release()

            started = time.monotonic()
            while time.monotonic() < deadline:
                await window.acquire()
                task = asyncio.create_task(publish_one())
                pending.add(task)
                task.add_done_callback(pending.discard)
            await asyncio.gather(*pending)
            elapsed = time.monotonic() - started
        finally:
            await channel.queue_delete(queue_name)
    return {
        "what": f"aio-pika persistent publish with confirms, {in_flight} in flight, quorum queue",
        "seconds": round(elapsed, 2),
        "messages": count,
        "per_s": round(count / elapsed, 1),
    }


async def relay_drain_rate(
    conninfo: str,
    url: str,
    namespace: str,
    rows: int,
    relay_pid: Callable[[], dict[str, int]],
    patience: float = 120.0,
) -> dict[str, Any]:
    """The running relay alone: commit `rows` outbox rows at once, time until all are gone."""
    exchange_name = f"{namespace}.internal"
    queue_name = f"{namespace}.bench.relay"
    routing_key = "bench.relay"
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(
            queue_name, durable=True, arguments={"x-queue-type": "quorum"}
        )
        await queue.bind(exchange_name, routing_key)
        try:
            body = json.dumps({"order_id": str(uuid.uuid4()), "amount": "10.00", "pad": "x" * 300})
            headers = json.dumps({"x-schema-version": 1})
            async with await db.connect(conninfo) as conn:
                async with (
                    conn.cursor() as cursor,
                    cursor.copy(
                        "COPY outbox (message_id, exchange, routing_key, message_type, "
                        "correlation_id, headers, body, created_at) FROM STDIN"
                    ) as copy,
                ):
                    for _ in range(rows):
                        await copy.write_row(
                            (
                                uuid.uuid4(),
                                "internal",
                                routing_key,
                                "BenchRelay",
                                uuid.uuid4(),
                                headers,
                                body,
                                "now",
                            )
                        )
                # The outbox trigger notifies at commit; one more NOTIFY costs nothing.
                await conn.execute("NOTIFY outbox")
                before = cpu_snapshot(relay_pid())
                await conn.commit()
                started = time.monotonic()
                await conn.set_autocommit(True)
                deadline = started + patience
                left = rows
                while left and time.monotonic() < deadline:
                    await asyncio.sleep(0.02)
                    cursor = await conn.execute("SELECT count(*) FROM outbox")
                    left = (await cursor.fetchone() or (0,))[0]
                elapsed = time.monotonic() - started
                cpu = cpu_delta(before, cpu_snapshot(relay_pid()))
        finally:
            await channel.queue_delete(queue_name)
    moved = rows - left
    relay_cpu = sum(v for k, v in cpu.items() if k.startswith("relay"))
    return {
        "what": f"the relay process alone: {rows} rows committed at once, until none is left",
        "rows": rows,
        "published": moved,
        "seconds": round(elapsed, 3),
        "per_s": round(moved / elapsed, 1) if elapsed > 0 else None,
        "relay_cpu_ms_per_row": round(relay_cpu * 1000 / moved, 3) if moved else None,
        "postgresql_cpu_ms_per_row": round(cpu["postgresql"] * 1000 / moved, 3) if moved else None,
        "rabbitmq_cpu_ms_per_row": round(cpu["rabbitmq"] * 1000 / moved, 3) if moved else None,
    }
