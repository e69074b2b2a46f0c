"""`python -m bench.run` (`make bench`): the end-to-end benchmark of the checkout system.

```
raw limits (system idle)   psycopg two-insert tx/s, aio-pika confirmed publishes/s
start the relay            then the relay alone: N outbox rows committed at once, drained
start every other part     mocks, api, saga, invoice, email, production (x --copies)
create the orders          the warm-up's with POST /orders, the rest with COPY (seconds,
                           not minutes; --orders-via-api for all through the API)
warm-up, idle              --warmup checkouts not counted; 3 s idle: each part's fixed cost
offered phase              open loop: a checkout every 1/--rate s for --seconds; stopped
                           early if --overload-seconds of the rate are left unfinished
drain                      until every accepted checkout is finished (or --drain-seconds)
full-speed phase           closed loop: --concurrency senders, <= --max-in-flight unfinished
drain, check               exactly one of every effect per PAID order, none for others
stop, clean up, report     SIGTERM (SIGKILL after a grace); drop database and namespace;
                           tables on the terminal, JSON in bench/results/
```

Completion is read from the database, not the API: the time the saga recorded the
`payment.succeeded` step (PAID) and the latest of the invoice's, e-mail's and production
submission's own timestamps (the last effect), against the time the POST was sent (open
loop: when it was due). Every process runs on this machine, so one clock serves.
Throughput and CPU per checkout are per window: checkouts whose last effect landed in
the phase's window, and the CPU each process spent in that window (`bench.observe`);
the database's transactions and rows per checkout come from `pg_stat_database`.

The exit status is 1 when the end-of-run check (`bench.check`) found a problem.

`--relay-only` stops after the raw limits and the relay alone: the relay's figure and
its ratio to the raw confirmed-publish rate in well under a minute.

`--search-million` is the other mode: a million orders in a database of their own, then
`GET /orders?name=` timed (see `bench.search`). `--smoke` is a few-second run for the
test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import aio_pika

from bench import db, raw
from bench import report as reporting
from bench.check import exactly_once
from bench.load import (
    Checkout,
    LoadState,
    OrderPool,
    closed_loop,
    copy_orders,
    create_orders,
    make_client,
    open_loop,
)
from bench.observe import (
    Progress,
    cpu_delta,
    cpu_snapshot,
    db_counters,
    machine_cpu,
    memory_mb,
)
from bench.stats import ratio, summary
from bench.system import BenchSystem, Part, amqp_url

PAID_AMOUNT = "10.00"  # the simulated Payment Service takes it
DECLINED_AMOUNT = "10.01"  # ... and declines this one


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("--rate", type=float, default=100.0, help="offered checkouts/s")
    parser.add_argument("--seconds", type=float, default=30.0, help="offered phase length")
    parser.add_argument("--full-speed-seconds", type=float, default=30.0)
    parser.add_argument(
        "--copies",
        type=int,
        choices=(1, 2),
        default=1,
        help="copies of each worker part (relay, saga, each consumer)",
    )
    parser.add_argument(
        "--concurrency", type=int, default=16, help="closed-loop senders at full speed"
    )
    parser.add_argument(
        "--max-in-flight",
        type=int,
        default=200,
        help="full speed: most checkouts sent but unfinished (0: no cap)",
    )
    parser.add_argument(
        "--full-speed-orders-per-s",
        type=float,
        default=300.0,
        help="orders made up front for the full-speed phase, per second of it",
    )
    parser.add_argument(
        "--declined-share",
        type=float,
        default=None,
        help="share of orders the payment service declines "
        "(default 0; 0.05 with --copies 2, so 'none for others' is tested)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=200,
        help="checkouts before the timed phases (first calls are slow)",
    )
    parser.add_argument(
        "--orders-via-api",
        action="store_true",
        help="create every order with POST /orders (slower) rather than COPY into the "
        "database; the warm-up's orders always go through the API",
    )
    parser.add_argument("--raw-seconds", type=float, default=5.0)
    parser.add_argument("--relay-rows", type=int, default=8000)
    parser.add_argument(
        "--relay-only",
        action="store_true",
        help="stop after the raw limits and the relay alone (no other part, no load phases)",
    )
    parser.add_argument(
        "--drain-seconds",
        type=float,
        default=60.0,
        help="after a phase, the longest wait for its checkouts to finish (it also ends "
        "after 10 s in which none finished)",
    )
    parser.add_argument(
        "--overload-seconds",
        type=float,
        default=3.0,
        help="the offered phase stops early when more than this many seconds of its rate "
        "are sent but unfinished (at least 200)",
    )
    parser.add_argument("--client", choices=("auto", "aiohttp", "httpx"), default="auto")
    parser.add_argument(
        "--profile",
        metavar="PART[,PART]",
        default=None,
        help="py-spy these parts (e.g. saga,email) during full speed (py-spy must be installed)",
    )
    parser.add_argument("--results-dir", type=Path, default=reporting.RESULTS)
    parser.add_argument(
        "--smoke", action="store_true", help="a few seconds of everything, for the test suite"
    )
    parser.add_argument(
        "--search-million",
        action="store_true",
        help="the search mode: GET /orders?name= on a million orders",
    )
    parser.add_argument("--search-orders", type=int, default=1_000_000)
    parser.add_argument("--search-seconds", type=float, default=20.0)
    parser.add_argument(
        "--keep-search-db",
        action="store_true",
        help="keep checkout_bench_million for the next --search-million",
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.rate, args.seconds, args.full_speed_seconds = 20.0, 3.0, 3.0
        args.raw_seconds, args.relay_rows, args.concurrency = 1.0, 500, 4
        args.warmup = 20
        args.full_speed_orders_per_s = 150.0
        args.search_orders, args.search_seconds = min(args.search_orders, 20_000), 3.0
    if args.declined_share is None:
        args.declined_share = 0.05 if args.copies == 2 else 0.0
    return args


# --------------------------------------------------------------------------- outcomes

OUTCOMES = """
    SELECT c.checkout_id::text, c.state,
           extract(epoch FROM (SELECT min(s.at) FROM checkout_steps s
                               WHERE s.checkout_id = c.checkout_id
                                 AND s.name = 'payment.succeeded'))::float8,
           extract(epoch FROM i.created_at)::float8,
           extract(epoch FROM e.sent_at)::float8,
           extract(epoch FROM p.submitted_at)::float8
    FROM checkouts c
    LEFT JOIN invoices i ON i.order_id = c.order_id
    LEFT JOIN email_notifications e ON e.order_id = c.order_id
    LEFT JOIN production_submissions p ON p.order_id = c.order_id
"""


async def fetch_outcomes(conninfo: str) -> dict[str, tuple[str, float | None, float | None]]:
    """checkout_id -> (state, PAID at, last effect at; None while an effect is missing)."""
    async with await db.connect(conninfo, autocommit=True) as conn:
        cursor = await conn.execute(OUTCOMES)
        rows = await cursor.fetchall()
    outcomes = {}
    for cid, state, paid, invoice, email, production in rows:
        effects = (invoice, email, production)
        last = None if any(e is None for e in effects) else max(effects)
        outcomes[cid] = (state, paid, last)
    return outcomes


def phase_figures(
    records: list[Checkout],
    outcomes: dict[str, tuple[str, float | None, float | None]],
    start: float,
    window: float,
    costs: dict[str, Any],
    raw_tx_per_s: float | None,
) -> dict[str, Any]:
    """The figures of one phase.

    Latencies are those of the phase's own checkouts. Throughput and CPU per checkout are
    those of the window: every checkout whose last effect landed in it, whichever phase
    sent it (a backlog left by an earlier phase is work done in this window, on this
    window's CPU).
    """
    end = start + window
    accepted = [r for r in records if r.accepted]
    paid_ms, last_ms, http_ms = [], [], []
    finished = failed = unfinished = 0
    completed_in_window = sum(
        1
        for state, _, last in outcomes.values()
        if state == "PAID" and last is not None and start <= last <= end
    )
    for r in records:
        if r.answered is not None and r.status is not None:
            http_ms.append((r.answered - r.sent) * 1000)
    for r in accepted:
        state, paid, last = outcomes.get(r.checkout_id or "", ("MISSING", None, None))
        if state == "FAILED":
            failed += 1
            continue
        if state != "PAID" or paid is None or last is None:
            unfinished += 1
            continue
        finished += 1
        paid_ms.append((paid - r.sent) * 1000)
        last_ms.append((last - r.sent) * 1000)
    accepted_in_window = sum(1 for r in accepted if r.answered is not None and r.answered <= end)
    completed_per_s = completed_in_window / window if window else None
    cpu: dict[str, float] = {k: v for k, v in costs.items() if k != "database"}
    database = costs.get("database") or {}
    busy = cpu.get("machine busy", 0.0)
    total = cpu.get("machine total", 0.0)
    per_checkout = {
        name: round(seconds * 1000 / completed_in_window, 3)
        for name, seconds in cpu.items()
        if name != "machine total" and completed_in_window
    }
    return {
        "window_s": round(window, 2),
        "sent": len(records),
        "accepted": len(accepted),
        "rejected": sum(1 for r in records if r.status is not None and r.status != 202),
        "errors": sum(1 for r in records if r.status is None),
        "refusals": dict(
            Counter(
                f"{r.status}: {(r.error or '')[:80]}"
                if r.status is not None
                else (r.error or "?")[:80]
                for r in records
                if r.status != 202
            ).most_common(5)
        ),
        "accepted_per_s": round(accepted_in_window / window, 1) if window else None,
        "completed_in_window": completed_in_window,
        "completed_per_s": round(completed_per_s, 1) if completed_per_s is not None else None,
        "finished_paid": finished,
        "finished_failed": failed,
        "unfinished": unfinished,
        "latency_ms": {
            "post_to_paid": summary(paid_ms),
            "post_to_last_effect": summary(last_ms),
            "http_post": summary(http_ms),
        },
        "cpu_seconds": cpu,
        "cpu_ms_per_checkout": per_checkout,
        "database_per_checkout": {
            name: round(count / completed_in_window, 2)
            for name, count in database.items()
            if completed_in_window
        },
        "machine_cpu_busy_share": round(busy / total, 3) if total else None,
        "ratios": {"completed_to_raw_tx": ratio(completed_per_s, raw_tx_per_s)},
    }


def counter_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {name: after[name] - before.get(name, 0) for name in after}


async def window_cpu(
    pids: dict[str, int], seconds: float, conninfo: str | None = None
) -> dict[str, Any]:
    """CPU seconds spent from now until `seconds` from now (run it alongside the load).

    With `conninfo`, also the database's commits and rows written in the window, under
    the key "database".
    """
    before = cpu_snapshot(pids)
    db_before = await db_counters(conninfo) if conninfo else {}
    await asyncio.sleep(seconds)
    cpu: dict[str, Any] = cpu_delta(before, cpu_snapshot(pids))
    if conninfo:
        cpu["database"] = counter_delta(db_before, await db_counters(conninfo))
    return cpu


async def drain(
    progress: Progress, state: LoadState, patience: float, stall: float = 15.0
) -> float:
    """Wait until every accepted checkout is finished; the seconds waited.

    Gives up after `patience` s, or after `stall` s in which no checkout moved at all.
    """
    started = last_change = time.monotonic()
    last_activity = progress.activity
    while time.monotonic() - started < patience:
        # A sample may predate the last acceptances: confirm with a fresh one.
        if progress.done >= state.accepted and (await progress.sample()).done >= state.accepted:
            break
        if progress.activity != last_activity:
            last_activity, last_change = progress.activity, time.monotonic()
        elif time.monotonic() - last_change > stall:
            break
        await asyncio.sleep(0.2)
    return round(time.monotonic() - started, 2)


async def versions(system: BenchSystem) -> dict[str, str]:
    found = {}
    with contextlib.suppress(Exception):
        async with await db.connect(system.conninfo) as conn:
            row = await (await conn.execute("SHOW server_version")).fetchone()
            found["postgresql"] = str(row[0]).split()[0] if row else "?"
    with contextlib.suppress(Exception):
        connection = await aio_pika.connect(amqp_url())
        async with connection:
            props = connection.transport.connection.server_properties  # type: ignore[union-attr]
            found["rabbitmq"] = str(props.get("version", "?"))
    return found


async def background_load(seconds: float = 1.0) -> float:
    """The share of all cores busy over `seconds` before anything of ours runs."""
    busy0, total0 = machine_cpu()
    await asyncio.sleep(seconds)
    busy1, total1 = machine_cpu()
    return round((busy1 - busy0) / (total1 - total0), 3) if total1 > total0 else 0.0


def say(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the run


async def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    system = BenchSystem(copies=args.copies)
    report: dict[str, Any] = {
        "kind": "checkout-benchmark",
        "schema_version": 1,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "revision": reporting.git_revision(),
        "machine": reporting.machine(),
        "config": {
            "rate": args.rate,
            "seconds": args.seconds,
            "full_speed_seconds": args.full_speed_seconds,
            "copies": args.copies,
            "concurrency": args.concurrency,
            "max_in_flight": args.max_in_flight,
            "declined_share": args.declined_share,
            "smoke": args.smoke,
            "checkout_env": {
                k: v
                for k, v in sorted(os.environ.items())
                if k.startswith("CHECKOUT_") and "URL" not in k
            },
        },
        "notes": [],
        "raw": {},
        "phases": {},
        "processes": {},
        "check": None,
        "search": None,
    }
    keep_logs = True  # the parts' logs are removed only after a run that went well
    wall_start = time.monotonic()
    try:
        say(
            f"database {system.database_url.rsplit('/', 1)[1]}, namespace {system.namespace}, "
            f"logs in {system.log_dir}"
        )
        busy = await background_load()
        report["machine"]["busy_share_before_run"] = busy
        if busy > 0.15:
            report["notes"].append(
                f"the machine was {busy:.0%} busy before the run started: other work on it "
                "takes CPU from the figures"
            )
        await asyncio.to_thread(system.prepare_database)
        await system.prepare_broker()
        report["machine"].update(await versions(system))

        say(f"raw limits: two-insert transactions, {args.raw_seconds:g} s")
        report["raw"]["pg_two_insert_tx"] = await raw.tx_rate(system.conninfo, args.raw_seconds)
        say(f"raw limits: confirmed publishes, {args.raw_seconds:g} s")
        report["raw"]["amqp_confirmed_publish"] = await raw.publish_rate(
            amqp_url(), args.raw_seconds
        )

        planned = system.plan()
        relay = planned[[p.name for p in planned].index("relay")]
        system.start([relay])
        await system.wait_ready([relay])
        say(f"relay alone: {args.relay_rows} outbox rows")
        report["raw"]["relay_alone"] = await raw.relay_drain_rate(
            system.conninfo,
            amqp_url(),
            system.namespace,
            args.relay_rows,
            lambda: {"relay": relay.pid},
        )
        raw_pub = report["raw"]["amqp_confirmed_publish"]["per_s"]
        report["ratios"] = {
            "relay_alone_to_raw_publish": ratio(report["raw"]["relay_alone"]["per_s"], raw_pub),
        }
        if args.relay_only:
            relay_rss = memory_mb(relay.pid)
            report["processes"]["relay"] = {
                "steady_rss_mb": relay_rss["rss_mb"],
                "peak_rss_mb": relay_rss["peak_rss_mb"],
            }
            crashed = system.exited()
            if crashed:
                report["notes"].append(f"parts exited during the run: {', '.join(crashed)}")
            keep_logs = bool(crashed)
        else:
            keep_logs = await checkout_phases(args, system, report, planned, relay)
    finally:
        say("stopping the system")
        await asyncio.to_thread(system.stop)
        await system.cleanup()
        if keep_logs:
            say(f"the parts' logs are kept in {system.log_dir}")
        else:
            system.forget_logs()
    report["wall_seconds"] = round(time.monotonic() - wall_start, 1)
    report["targets"] = reporting.measured_targets(report)
    return report


async def checkout_phases(
    args: argparse.Namespace,
    system: BenchSystem,
    report: dict[str, Any],
    planned: list[Part],
    relay: Part,
) -> bool:
    """Every part but the (running) relay started, then the load phases and the check.

    Fills `report`; returns whether the parts' logs may be removed (a clean run).
    """
    client = None
    keep_logs = True
    try:
        rest = [p for p in planned if p is not relay]
        system.start(rest)
        await system.wait_ready(rest)
        say(f"system up: {', '.join(p.name for p in system.parts)}")

        raw_tx = report["raw"]["pg_two_insert_tx"]["per_s"]

        client = make_client(system.api, max(args.concurrency, 32), args.client, system.auth)
        report["config"]["http_client"] = client.kind
        n_offered = int(args.rate * args.seconds)
        n_full = int(args.full_speed_seconds * args.full_speed_orders_per_s)
        every = round(1 / args.declined_share) if args.declined_share > 0 else 0
        amounts = [
            DECLINED_AMOUNT if every and i % every == every - 1 else PAID_AMOUNT
            for i in range(args.warmup + n_offered + n_full)
        ]
        via = "POST /orders" if args.orders_via_api else "COPY"
        say(
            f"creating {len(amounts)} orders ({args.warmup} for the warm-up with POST /orders, "
            f"the others with {via})"
        )
        started = time.monotonic()
        orders = await create_orders(client, amounts[: args.warmup], concurrency=16)
        if args.orders_via_api:
            orders += await create_orders(client, amounts[args.warmup :], concurrency=16)
        else:
            orders += await copy_orders(system.conninfo, amounts[args.warmup :], args.warmup)
        took = time.monotonic() - started
        report["orders"] = {
            "created": len(orders),
            "via": via,
            "seconds": round(took, 2),
            "per_s": round(len(orders) / took, 1),
        }
        warm_pool = OrderPool(orders[: args.warmup])
        offered_pool = OrderPool(orders[args.warmup : args.warmup + n_offered])
        full_pool = OrderPool(orders[args.warmup + n_offered :])

        pids = system.pids()
        state = LoadState()
        records: dict[str, list[Checkout]] = {}
        cpu: dict[str, dict[str, Any]] = {}
        windows: dict[str, tuple[float, float]] = {}
        profiling: list[tuple[Any, Path, str]] = []
        async with Progress(system.conninfo) as progress:
            if args.warmup:
                say(f"warm-up: {args.warmup} checkouts, not counted")
                warm_rate = min(args.rate, 50.0)
                records["warmup"] = await open_loop(
                    client, warm_pool, warm_rate, args.warmup / warm_rate, state, "warmup"
                )
                await drain(progress, state, args.drain_seconds)
            idle_seconds = 1.0 if args.smoke else 3.0
            say(f"idle: {idle_seconds:g} s with no load, for each part's fixed cost")
            idle = await window_cpu(pids, idle_seconds)
            report["idle_cpu_share"] = {
                name: round(seconds / idle_seconds, 3)
                for name, seconds in idle.items()
                if name != "machine total"
            }
            say(f"offered phase: {args.rate:g}/s for {args.seconds:g} s")
            offered_before = cpu_snapshot(pids)
            db_before = await db_counters(system.conninfo)
            cpu_task = asyncio.create_task(window_cpu(pids, args.seconds, system.conninfo))
            t0 = time.time()
            backlog = max(200, int(args.rate * args.overload_seconds))
            records["offered"] = await open_loop(
                client,
                offered_pool,
                args.rate,
                args.seconds,
                state,
                overloaded=lambda: state.outstanding(progress.done) > backlog,
            )
            sent_for = state.last_send - t0
            if len(records["offered"]) < n_offered:
                report["notes"].append(
                    f"overloaded: the offered phase stopped after {sent_for:.1f} s, when more "
                    f"than {backlog} checkouts were unfinished ({args.overload_seconds:g} s "
                    f"of the offered rate); the system does not keep up with {args.rate:g}/s"
                )
                cpu_task.cancel()
                windows["offered"] = (t0, sent_for)
                cpu["offered"] = {
                    **cpu_delta(offered_before, cpu_snapshot(pids)),
                    "database": counter_delta(db_before, await db_counters(system.conninfo)),
                }
            else:
                cpu["offered"] = await cpu_task
                windows["offered"] = (t0, args.seconds)
            waited = await drain(progress, state, args.drain_seconds)
            say(f"offered phase drained in {waited:g} s")
            left = state.accepted - progress.done
            if left > 0:
                report["notes"].append(
                    f"the offered phase had not drained after {waited:g} s: about {left} "
                    "checkouts were unfinished when full speed began"
                )

            say(
                f"full speed: {args.concurrency} senders, at most {args.max_in_flight} "
                f"unfinished, {args.full_speed_seconds:g} s"
            )
            if args.profile:
                profiling = start_profiles(args, system, report)
            cpu_task = asyncio.create_task(
                window_cpu(pids, args.full_speed_seconds, system.conninfo)
            )
            t2 = time.time()
            records["full_speed"] = await closed_loop(
                client,
                full_pool,
                args.concurrency,
                args.full_speed_seconds,
                state,
                in_flight=lambda: state.outstanding(progress.done),
                max_in_flight=args.max_in_flight,
                amount=PAID_AMOUNT,
            )
            cpu["full_speed"] = await cpu_task
            windows["full_speed"] = (t2, args.full_speed_seconds)
            steady = {name: memory_mb(pid) for name, pid in pids.items()}
            waited = await drain(progress, state, args.drain_seconds)
            say(f"full speed drained in {waited:g} s")
            lag = {name: progress.lag(s, s + w) for name, (s, w) in windows.items()}

        if state.orders_created_during_load:
            report["notes"].append(
                f"{state.orders_created_during_load} orders were created during the full-speed "
                "phase (raise --full-speed-orders-per-s)"
            )
        outcomes = await fetch_outcomes(system.conninfo)
        for name, (start, window) in windows.items():
            figures = phase_figures(records[name], outcomes, start, window, cpu[name], raw_tx)
            figures["outbox"] = lag[name]
            if name == "offered":
                figures["offered_rate"] = args.rate
            else:
                figures["concurrency"] = args.concurrency
            report["phases"][name] = figures

        say("checking: every checkout final, exactly one of every effect")
        metrics_urls = [
            p.health_url.replace("/health/ready", "/metrics")
            for p in system.parts
            if p.name not in ("api", "mocks")
        ]
        all_records = [r for phase in records.values() for r in phase]
        report["check"] = await exactly_once(
            system.conninfo, system.mocks, system.settings, all_records, args.copies, metrics_urls
        )
        for name, pid in pids.items():
            report["processes"][name] = {
                "steady_rss_mb": steady[name]["rss_mb"],
                "peak_rss_mb": memory_mb(pid)["peak_rss_mb"],
            }
        crashed = system.exited()
        if crashed:
            report["notes"].append(f"parts exited during the run: {', '.join(crashed)}")
        elif report["check"]["ok"]:
            keep_logs = False
        for handle in profiling:
            finish_profile(handle, report)
    finally:
        if client is not None:
            await client.aclose()
    return keep_logs


def start_profiles(
    args: argparse.Namespace, system: BenchSystem, report: dict[str, Any]
) -> list[tuple[Any, Path, str]]:
    from bench import profile

    started = []
    for name in args.profile.split(","):
        part = next((p for p in system.parts if p.name == name.strip()), None)
        if part is None:
            report["notes"].append(f"--profile {name}: no such part")
            continue
        args.results_dir.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S")
        output = args.results_dir / f"profile-{part.name.replace('#', '-')}-{stamp}.json"
        try:
            proc = profile.start(part.pid, args.full_speed_seconds, output)
        except RuntimeError as exc:
            report["notes"].append(str(exc))
            break
        started.append((proc, output, part.name))
    return started


def finish_profile(handle: tuple[Any, Path, str], report: dict[str, Any]) -> None:
    from bench import profile

    proc, output, part = handle
    try:
        _, err = proc.communicate(timeout=30)
    except Exception:
        proc.kill()
        report["notes"].append("py-spy did not finish")
        return
    if not output.exists():
        report["notes"].append(f"py-spy wrote no profile: {err.decode(errors='replace')[:300]}")
        return
    report.setdefault("profiles", {})[part] = profile.summarise(output)


async def _stoppable(args: argparse.Namespace) -> dict[str, Any]:
    """The run, cancelled by SIGTERM as by Ctrl-C, so that its clean-up still happens."""
    if args.search_million:
        from bench.search import run_search

        task = asyncio.create_task(run_search(args))
    else:
        task = asyncio.create_task(run_bench(args))
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await task


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    with contextlib.suppress(ImportError):  # uvicorn[standard] brings uvloop
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        result = runner.run(_stoppable(args))
    path = reporting.write(result, args.results_dir, "search-" if args.search_million else "")
    result["path"] = str(path)
    reporting.show(result)
    check = result.get("check")
    return 1 if check and not check.get("ok") else 0


if __name__ == "__main__":
    sys.exit(main())
