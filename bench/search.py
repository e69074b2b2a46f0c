"""`python -m bench.run --search-million` (`make bench-search`): name search on a million orders.

Loading takes a while, so this is a mode of its own:

1. a database of its own, `checkout_bench_million`, migrated like any other;
2. the orders loaded with COPY (names from word lists plus a serial number, created over
   the past year in the order they are inserted, as the API writes them: random creation
   times in random physical order, as an earlier version loaded them, made every page of
   newest matches a scatter of random reads no real table has), with the two order
   indexes dropped during the load and built after it (faster than maintaining them row
   by row), then VACUUM ANALYZE;
3. the API alone started on it, as a process;
4. `GET /orders?name=...&limit=20` one request at a time for `--search-seconds`, cycling
   through kinds of substring: a common word, a rare word, a two-word phrase, a number
   that matches one order, a three-letter fragment, and a string that matches nothing;
5. the API stopped and the database dropped, unless `--keep-search-db` (then the next
   run finds the orders loaded and skips steps 1-2).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from bench import db
from bench import report as reporting
from bench.load import make_client
from bench.stats import summary
from bench.system import BenchSystem

ADJECTIVES = [
    "Summer",
    "Winter",
    "Spring",
    "Autumn",
    "Classic",
    "Modern",
    "Vintage",
    "Bold",
    "Quiet",
    "Bright",
    "Dark",
    "Golden",
    "Silver",
    "Urban",
    "Rustic",
    "Minimal",
    "Grand",
    "Tiny",
]
THEMES = [
    "campaign",
    "festival",
    "wedding",
    "birthday",
    "concert",
    "exhibition",
    "launch",
    "conference",
    "reunion",
    "holiday",
    "market",
    "gallery",
    "theatre",
    "sports",
    "charity",
]
PRODUCTS = [
    "poster",
    "flyer",
    "banner",
    "brochure",
    "business cards",
    "postcard",
    "sticker",
    "calendar",
    "catalogue",
    "invitation",
    "menu",
    "leaflet",
    "canvas",
    "booklet",
]
SIZES = ["A0", "A1", "A2", "A3", "A4", "A5", "A6", "square", "panorama"]
SYLLABLES = [
    "ka",
    "lo",
    "mi",
    "ren",
    "tu",
    "vo",
    "zel",
    "qua",
    "bri",
    "dor",
    "fen",
    "gil",
    "pa",
    "sum",
    "ty",
    "wex",
]

BATCH = 20_000


def rare_words(rng: random.Random, count: int = 5000) -> list[str]:
    """Made-up words, each in about 1 of `count` names: the rare substrings."""
    words: set[str] = set()
    while len(words) < count:
        words.add("".join(rng.choice(SYLLABLES) for _ in range(4)))  # 65,536 possible
    return sorted(words)


def order_lines(count: int, seed: int = 7) -> Iterator[bytes]:
    """COPY text lines of `count` orders, yielded in batches."""
    rng = random.Random(seed)
    rare = rare_words(random.Random(seed + 1))
    now = datetime.now(UTC)
    year = 365 * 24 * 3600
    batch: list[str] = []
    for i in range(count):
        name = (
            f"{rng.choice(ADJECTIVES)} {rng.choice(THEMES)} {rng.choice(PRODUCTS)} "
            f"{rng.choice(SIZES)} {rng.choice(rare)} #{i:07d}"
        )
        # In creation order, as the API inserts them: the table's physical order follows
        # created_at, so a page of the newest matches is a few neighbouring blocks.
        created = (now - timedelta(seconds=year * (1 - (i + rng.random()) / count))).isoformat()
        oid = uuid.UUID(int=rng.getrandbits(128), version=4)
        cents = rng.randrange(100, 100000)
        batch.append(
            f"{oid}\t{name}\t{cents // 100}.{cents % 100:02d}\tUSD\tc{i}@example.com\t"
            f"Customer {i}\tPENDING\t{created}\t{created}\n"
        )
        if len(batch) == BATCH:
            yield "".join(batch).encode()
            batch = []
    if batch:
        yield "".join(batch).encode()


def queries(rng: random.Random, count: int) -> list[tuple[str, str]]:
    """(kind, substring) pairs, an equal share of each kind, shuffled."""
    rare = rare_words(random.Random(8))
    kinds: dict[str, Callable[[], str]] = {
        "common word": lambda: rng.choice(PRODUCTS + THEMES),
        "rare word": lambda: rng.choice(rare),
        "two words": lambda: f"{rng.choice(THEMES)} {rng.choice(PRODUCTS)}",
        "one order (#number)": lambda: f"#{rng.randrange(count):07d}",
        "three letters": lambda: rng.choice(PRODUCTS + THEMES)[1:4],
        "no match": lambda: f"zq{rng.randrange(10**6)}x",
    }
    pairs = [(kind, make()) for _ in range(400) for kind, make in kinds.items()]
    rng.shuffle(pairs)
    return pairs


async def load_orders(conninfo: str, count: int) -> dict[str, Any]:
    """COPY `count` orders in (indexes dropped, then rebuilt); the seconds each step took."""
    steps: dict[str, float] = {}
    async with await db.connect(conninfo, autocommit=True) as conn:
        started = time.monotonic()
        await conn.execute("TRUNCATE orders CASCADE")
        await conn.execute("DROP INDEX IF EXISTS orders_name_trgm_idx")
        await conn.execute("DROP INDEX IF EXISTS orders_created_idx")
        async with (
            conn.cursor() as cursor,
            cursor.copy(
                "COPY orders (order_id, order_name, amount, currency, customer_email, "
                "customer_name, status, created_at, updated_at) FROM STDIN"
            ) as copy,
        ):
            for chunk in order_lines(count):
                await copy.write(chunk)
        steps["copy"] = round(time.monotonic() - started, 1)
        await conn.execute("SET maintenance_work_mem = '512MB'")
        started = time.monotonic()
        await conn.execute(
            "CREATE INDEX orders_created_idx ON orders (created_at DESC, order_id DESC)"
        )
        steps["created_at index"] = round(time.monotonic() - started, 1)
        started = time.monotonic()
        await conn.execute(
            "CREATE INDEX orders_name_trgm_idx ON orders USING gin (order_name gin_trgm_ops)"
        )
        steps["trigram index"] = round(time.monotonic() - started, 1)
        started = time.monotonic()
        await conn.execute("VACUUM ANALYZE orders")
        steps["vacuum analyze"] = round(time.monotonic() - started, 1)
    return steps


async def order_count(conninfo: str) -> int:
    async with await db.connect(conninfo, autocommit=True) as conn:
        row = await (await conn.execute("SELECT count(*) FROM orders")).fetchone()
        return int(row[0]) if row else 0


async def run_search(args: argparse.Namespace) -> dict[str, Any]:
    from bench.run import background_load, say, versions

    system = BenchSystem(tag="million" if args.keep_search_db else uuid.uuid4().hex[:8])
    result: dict[str, Any] = {
        "kind": "checkout-benchmark-search",
        "schema_version": 1,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "revision": reporting.git_revision(),
        "machine": reporting.machine(),
        "config": {"orders": args.search_orders, "seconds": args.search_seconds},
        "notes": [],
    }
    client = None
    try:
        result["machine"]["busy_share_before_run"] = await background_load()
        await asyncio.to_thread(system.prepare_database)
        result["machine"].update(await versions(system))
        started = time.monotonic()
        present = await order_count(system.conninfo)
        if present == args.search_orders:
            steps: dict[str, float] = {"reused": 0.0}
            say(f"{present} orders already loaded in {system.database_url.rsplit('/', 1)[1]}")
        else:
            say(f"loading {args.search_orders} orders with COPY")
            steps = await load_orders(system.conninfo, args.search_orders)
        load_seconds = round(time.monotonic() - started, 1)
        say(f"loaded in {load_seconds} s: {steps}")

        api = system.part("api", "api")
        system.start([api])
        await system.wait_ready([api])
        client = make_client(system.api, 2, args.client, system.auth)
        rng = random.Random(11)
        pairs = queries(rng, args.search_orders)
        for _, text in pairs[:30]:  # warm the API and the caches
            await client.request("GET", f"/orders?name={quote(text)}&limit=20")
        say(f"searching for {args.search_seconds:g} s")
        by_kind: dict[str, list[float]] = {}
        hits: dict[str, list[int]] = {}
        deadline = time.monotonic() + args.search_seconds
        i = 0
        while time.monotonic() < deadline:
            kind, text = pairs[i % len(pairs)]
            i += 1
            sent = time.perf_counter()
            status, content = await client.request("GET", f"/orders?name={quote(text)}&limit=20")
            elapsed = (time.perf_counter() - sent) * 1000
            if status != 200:
                raise RuntimeError(f"GET /orders?name={text} answered {status}: {content[:200]!r}")
            by_kind.setdefault(kind, []).append(elapsed)
            hits.setdefault(kind, []).append(content.count(b'"order_id"'))
        latency = {kind: summary(values) for kind, values in sorted(by_kind.items())}
        latency["all"] = summary([v for values in by_kind.values() for v in values])
        result["search"] = {
            "orders": args.search_orders,
            "load_seconds": load_seconds,
            "load_steps_seconds": steps,
            "load_detail": ", ".join(f"{k} {v:g} s" for k, v in steps.items()),
            "requests": i,
            "concurrency": 1,
            "page_size": 20,
            "mean_orders_per_page": {
                kind: round(sum(v) / len(v), 1) for kind, v in sorted(hits.items())
            },
            "latency_ms": latency,
            "http_client": client.kind,
        }
    finally:
        if client is not None:
            await client.aclose()
        await asyncio.to_thread(system.stop)
        if not args.keep_search_db:
            await system.cleanup()
    system.forget_logs()
    result["targets"] = reporting.measured_targets(result)
    return result
