"""`make drill`: the system on a 3-node RabbitMQ cluster and PgBouncer, nodes killed.

1. Starts the cluster, haproxy and PgBouncer (`deploy.drill.cluster`), then the whole
   system as processes (the fault suite's `start_system`), with
   `CHECKOUT_DATABASE_URL` through PgBouncer in transaction mode, the relay's LISTEN
   straight to PostgreSQL (`CHECKOUT_DATABASE_LISTEN_URL`), and the broker through
   haproxy (`--via haproxy`, the default) or the list of the three nodes' URLs
   (`--via list`). The topology is declared through node 3 first, so that node 3
   leads the quorum queues (a queue's leader is placed on the declaring client's
   node), while the parts connect to node 1: the three roles are three nodes.
2. Three phases, each under a steady load of checkouts (the fault suite's workload:
   declined cards, concurrent pairs and repeated keys among them, and a fifth of the
   orders cancelled within two seconds of their checkout): a node is SIGKILLed
   a third of the way in, started again later, and the load runs on past its return.
   The nodes: a follower (no leaders, no connections), the node the parts are
   connected to, and the node that leads the queues, each chosen by looking.
3. Once everything settles, the fault suite's checker over the whole run: every
   checkout PAID or FAILED, every cancellation CANCELLED or REJECTED, one charge per
   paid order and a refund for each cancelled one, one of each effect, nothing in a
   dead-letter queue, nothing applied twice. And per kill: how long checkouts
   stalled (the longest stretch in which no checkout finished, and the slowest
   checkout started in the 5 s after the kill), next to the node's downtime.
4. Last, RabbitMQ 3.10's stuck-nacking channel provoked for real on the cluster
   (`deploy.drill.nack_probe`): what a bare channel answers, and how a `Publisher`
   gets through.

The report is printed and written to `<workdir>/report.txt`; the exit status says
whether the checker passed. `--short` runs shorter phases at a lower rate (for a busy
machine). Nothing here is run by `make test`; `tests/unit/test_drill_config.py`
checks that this module imports and the configuration renders.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench import db
from deploy.drill.cluster import Cluster, Node
from deploy.drill.nack_probe import probe
from infra.db.migrate import libpq_url
from infra.messaging.topology import Topology, declare_apart
from infra.settings import load_settings
from tests.faults.chaos import Workload
from tests.faults.checker import Facts, FaultEvent, Report, check
from tests.faults.collect import gather_facts, wait_quiet
from tests.faults.system import RETRY_DELAYS, WORKERS, FaultSystem, destroy_system, start_system

# The fault suite's proof that its injected faults bit (a redelivery, a suppressed
# duplicate): a node's death need not cause either, so the drill does not require it.
NOT_REQUIRED = "faults bit"


class DrillWorkload(Workload):
    """The fault suite's workload without its slow and flaky payments: a stall here
    must be the cluster's, not a simulated service's."""

    BEHAVIOURS = (("normal", 85), ("declined", 15), ("flaky", 0), ("slow", 0))


@dataclass
class Phase:
    role: str  # follower | connections | leaders
    node: str = ""
    killed_at: float = 0.0
    restarted_at: float = 0.0
    back_at: float = 0.0
    leaders_before: dict[str, int] = field(default_factory=dict)
    connections_before: dict[str, int] = field(default_factory=dict)
    workload: DrillWorkload | None = None
    longest_gap_s: float = 0.0
    slowest_after_kill_s: float = 0.0
    typical_s: float = 0.0
    checkouts: int = 0


async def connections_by_node(cluster: Cluster, namespace: str) -> Counter[str]:
    """Where the run's parts are connected: connections per node."""
    via = next(n for n in cluster.nodes if n.alive)
    out = await via.ctl(
        "list_connections", "port", "client_properties", "--formatter", "json", "--quiet"
    )
    by_port = {n.amqp_port: n.name for n in cluster.nodes}
    counts: Counter[str] = Counter()
    for entry in json.loads(out or "[]"):
        if f'"{namespace}.' not in json.dumps(entry.get("client_properties")):
            continue
        counts[by_port.get(int(entry.get("port", 0)), "?")] += 1  # the node's own port
    return counts


def choose(role: str, cluster: Cluster, leaders: Counter[str], conns: Counter[str]) -> Node:
    """The node to kill for `role`, from where leaders and connections are now."""
    names = [n.name for n in cluster.nodes]
    lead = max(names, key=lambda n: leaders[n])
    connected = max(names, key=lambda n: conns[n])
    if role == "leaders":
        return cluster.node(lead)
    if role == "connections":
        return cluster.node(connected)
    others = [n for n in names if n not in (lead, connected)] or [
        n for n in names if n != connected
    ]
    return cluster.node(min(others, key=lambda n: (leaders[n], conns[n])))


async def finish_times(conninfo: str, checkout_ids: list[str]) -> list[tuple[float, float]]:
    """(created, finished) epoch seconds of the final checkouts among `checkout_ids`."""
    async with await db.connect(conninfo) as conn:
        cursor = await conn.execute(
            "SELECT extract(epoch FROM created_at)::float8, extract(epoch FROM updated_at)::float8"
            " FROM checkouts WHERE checkout_id = ANY(%s::uuid[]) AND state IN ('PAID','FAILED')",
            (checkout_ids,),
        )
        return [(float(a), float(b)) for a, b in await cursor.fetchall()]


def measure(phase: Phase, times: list[tuple[float, float]]) -> None:
    """The phase's stall figures from its checkouts' start and finish times."""
    if not times:
        return
    phase.checkouts = len(times)
    before = sorted(f - c for c, f in times if f < phase.killed_at)
    phase.typical_s = before[len(before) // 2] if before else 0.0
    after = [f - c for c, f in times if phase.killed_at - 1 <= c <= phase.killed_at + 5]
    phase.slowest_after_kill_s = max(after, default=0.0)
    finished = sorted(f for _, f in times)
    window = [phase.killed_at, *(f for f in finished if f >= phase.killed_at)]
    gaps = [b - a for a, b in itertools.pairwise(window)]
    phase.longest_gap_s = max(gaps, default=0.0)


async def run_phase(
    phase: Phase,
    cluster: Cluster,
    system: FaultSystem,
    client: httpx.AsyncClient,
    *,
    seconds: float,
    rate: float,
    seed: int,
) -> None:
    leaders = await cluster.leaders(system.namespace)
    conns = await connections_by_node(cluster, system.namespace)
    phase.leaders_before, phase.connections_before = dict(leaders), dict(conns)
    node = choose(phase.role, cluster, leaders, conns)
    phase.node = node.name
    workload = DrillWorkload(
        system.api, random.Random(f"{seed}-{phase.role}"), round(seconds * rate)
    )
    phase.workload = workload
    print(
        f"[{phase.role}] leaders {dict(leaders)}; connections {dict(conns)}; killing {node.name}",
        flush=True,
    )

    async def fault() -> None:
        await asyncio.sleep(seconds / 3)
        phase.killed_at = time.time()
        await asyncio.to_thread(node.kill)
        await asyncio.sleep(seconds / 3)
        phase.restarted_at = time.time()
        await cluster.restart(node)
        phase.back_at = time.time()

    # Orders are placed first (the workload's way), then checked out at a steady pace.
    await asyncio.gather(workload.run(client, seconds), fault())


def phase_lines(phases: list[Phase]) -> list[str]:
    lines = [
        "kill         node              down_s  typical_s  longest_gap_s  slowest_after_kill_s",
    ]
    for p in phases:
        down = p.back_at - p.killed_at
        lines.append(
            f"{p.role:<12} {p.node:<17} {down:6.1f}  {p.typical_s:9.2f}  {p.longest_gap_s:13.2f}"
            f"  {p.slowest_after_kill_s:20.2f}"
        )
    return lines


async def drill(args: argparse.Namespace) -> Report:
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="checkout-drill-"))
    seconds, rate = (24.0, 3.0) if args.short else (45.0, 5.0)
    cluster = Cluster(workdir / "cluster")
    began = time.monotonic()
    print(f"drill: work directory {workdir}", flush=True)
    system: FaultSystem | None = None
    try:
        # In the try: nodes started before a failure (haproxy or PgBouncer not starting,
        # say) are stopped too, or the next drill finds their names taken.
        await cluster.start()
        up_s = time.monotonic() - began
        print(f"cluster of 3 up in {up_s:.0f}s: {cluster.node_urls}", flush=True)
        broker = cluster.haproxy_url if args.via == "haproxy" else cluster.node_urls
        tag = uuid.uuid4().hex[:10]
        direct = f"postgresql+psycopg://postgres@127.0.0.1:5432/checkout_faults_{tag}"
        base = load_settings(
            database_url=cluster.pgbouncer_url("postgres"),
            rabbit_url=cluster.haproxy_url,
            namespace=f"faults_{tag}",
        )
        # Leaders on node 3: declared through it before any part starts.
        delays = load_settings(retry_delays=RETRY_DELAYS, namespace=f"faults_{tag}")
        await declare_apart(cluster.nodes[2].url, Topology.from_settings(delays))
        system = await start_system(
            base,
            workdir / "parts",
            tag=tag,
            extra_env={
                "CHECKOUT_RABBIT_URL": broker,
                "CHECKOUT_DATABASE_LISTEN_URL": direct,
                # The workload places a phase's orders at once, then checks them out.
                "CHECKOUT_API_RATE_LIMIT": "100000/second",
            },
        )
        print(f"system up through PgBouncer and {args.via}; logs in {system.workdir}", flush=True)
        phases = [Phase("follower"), Phase("connections"), Phase("leaders")]
        async with httpx.AsyncClient(timeout=60, headers=system.auth) as client:
            for number, phase in enumerate(phases):
                await run_phase(
                    phase,
                    cluster,
                    system,
                    client,
                    seconds=seconds,
                    rate=rate,
                    seed=args.seed + number,
                )
        accepted: dict[str, str] = {}
        for phase in phases:
            assert phase.workload is not None
            accepted |= phase.workload.accepted
        mark = time.monotonic()
        settled, _, state = await wait_quiet(system, accepted, timeout=120)
        settle = time.monotonic() - mark
        print(f"settled={settled} in {settle:.1f}s {state}", flush=True)
        conninfo = libpq_url(direct)
        for phase in phases:
            assert phase.workload is not None
            measure(phase, await finish_times(conninfo, list(phase.workload.accepted)))
        facts = Facts(
            seed=args.seed,
            fault_seconds=seconds * len(phases),
            accepted=accepted,
            faults=[
                FaultEvent(p.killed_at, "broker-reset", part, p.back_at, f"kill {p.node}")
                for p in phases
                for part in WORKERS
            ],
            settled=settled,
            settle_seconds=settle,
        )
        await gather_facts(system, facts)
        errors = [e for p in phases if p.workload for e in p.workload.errors]
        facts.stats |= {
            "via": args.via,
            "orders": sum(len(p.workload.plans) for p in phases if p.workload),
            "client_errors": len(errors),
            "rate_per_s": rate,
            "phase_s": seconds,
            "total_s": round(time.monotonic() - began, 1),
        }
        # Retries and suppressed duplicates stay among the numbers.
        full = check(facts, title="CLUSTER DRILL")
        kept = tuple(c for c in full.checks if c.name != NOT_REQUIRED)
        report = Report(full.seed, kept, full.numbers, full.title)
        text = "\n".join([report.text(), *phase_lines(phases)])
        if args.nack_probe:  # after the checker: it costs the system its quorum a while
            print(
                f"checker: {'PASS' if report.ok else 'FAIL'}; probing the stuck channel", flush=True
            )
            text += "\nstuck-nacking channel probe:\n" + "\n".join(
                "  " + line for line in await probe(cluster)
            )
        print("\n" + text, flush=True)
        if errors:
            print("client errors:", *errors[:10], sep="\n  ")
        (workdir / "report.txt").write_text(text + "\n")
        return report
    finally:
        if system is not None:
            await destroy_system(system)
        cluster.stop()


def passed(report: Report) -> bool:
    """The drill's verdict: nothing lost, nothing doubled."""
    return report.ok and len(report.checks) >= 5


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make drill", description=__doc__.split("\n")[0])
    parser.add_argument("--via", choices=("haproxy", "list"), default="haproxy")
    parser.add_argument("--short", action="store_true", help="shorter phases, lower rate")
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument(
        "--no-nack-probe",
        dest="nack_probe",
        action="store_false",
        help="skip the last step (3.10's stuck-nacking channel, deploy/drill/nack_probe.py)",
    )
    parser.add_argument("--workdir", help="where the cluster and the parts keep their files")
    args = parser.parse_args(argv)
    report = asyncio.run(drill(args))
    ok = passed(report)
    print(f"drill verdict: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
