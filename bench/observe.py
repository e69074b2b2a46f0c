"""What the processes cost and how far behind the outbox is, observed from outside.

- CPU seconds (user + system) of a process and its descendants from `/proc/<pid>/stat`,
  of PostgreSQL and RabbitMQ by process name, of this driver, and of the whole machine
  (`/proc/stat`), so a phase's cost is the difference of two snapshots.
- Memory from `/proc/<pid>/status`: `VmRSS` now and `VmHWM`, the peak resident size.
- `Progress`: every `interval` seconds one SQL statement reads the outbox's backlog
  (rows pending, age of the oldest) and how many checkouts are done, for the report's
  lag figures and for the closed loop's cap on work in flight. Reading the database
  rather than the parts' `/metrics` keeps the parts' sampling interval (5 s) out of it
  and costs the system nothing but a few index-only counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg

from bench import db

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# Processes of the machine's services, by their name in /proc/<pid>/stat.
SERVICE_NAMES: Mapping[str, tuple[str, ...]] = {
    "postgresql": ("postgres",),
    "rabbitmq": ("beam.smp", "erl_child_setup", "epmd", "inet_gethost"),
}


@dataclass(frozen=True)
class ProcStat:
    pid: int
    ppid: int
    comm: str
    cpu_seconds: float


def read_stat(pid: int | str) -> ProcStat | None:
    """One process's parent, name and CPU seconds (user + system); None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            data = handle.read()
    except OSError:
        return None
    # The name is in parentheses and may itself contain spaces or parentheses.
    left, right = data.find("("), data.rfind(")")
    fields = data[right + 2 :].split()
    # fields[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
    return ProcStat(
        pid=int(pid),
        ppid=int(fields[1]),
        comm=data[left + 1 : right],
        cpu_seconds=(int(fields[11]) + int(fields[12])) / CLOCK_TICKS,
    )


def process_table() -> dict[int, ProcStat]:
    """Every process of the machine that we may read."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = read_stat(entry)
            if stat is not None:
                table[stat.pid] = stat
    return table


def tree_cpu(root: int, table: Mapping[int, ProcStat]) -> float:
    """CPU seconds of `root` and every live descendant of it."""
    children: dict[int, list[int]] = {}
    for stat in table.values():
        children.setdefault(stat.ppid, []).append(stat.pid)
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        if pid in table:
            total += table[pid].cpu_seconds
        todo.extend(children.get(pid, ()))
    return total


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, summed over its cores."""
    with open("/proc/stat", encoding="ascii") as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    total = sum(values[:8])  # without guest time, which is already in user
    return (total - idle) / CLOCK_TICKS, total / CLOCK_TICKS


def memory_mb(pid: int) -> dict[str, float | None]:
    """Resident size now (`rss_mb`) and at its peak (`peak_rss_mb`, VmHWM), in MiB."""
    found: dict[str, float | None] = {"rss_mb": None, "peak_rss_mb": None}
    keys = {"VmRSS:": "rss_mb", "VmHWM:": "peak_rss_mb"}
    with (
        contextlib.suppress(OSError),
        open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as handle,
    ):
        for line in handle:
            parts = line.split()
            if parts and parts[0] in keys:
                found[keys[parts[0]]] = round(int(parts[1]) / 1024, 1)
    return found


Snapshot = dict[str, dict[int, float]]


def cpu_snapshot(parts: Mapping[str, int]) -> Snapshot:
    """CPU seconds so far of each part (by pid), the services, this driver and the machine.

    Kept per process, so that `cpu_delta` can count each one's own difference: a
    PostgreSQL backend that exits between two snapshots must not subtract its whole
    life's CPU from the sum.
    """
    table = process_table()
    snap: Snapshot = {name: {pid: tree_cpu(pid, table)} for name, pid in parts.items()}
    for service, names in SERVICE_NAMES.items():
        snap[service] = {s.pid: s.cpu_seconds for s in table.values() if s.comm in names}
    own = read_stat(os.getpid())
    snap["bench driver"] = {os.getpid(): own.cpu_seconds if own else 0.0}
    busy, total = machine_cpu()
    snap["machine busy"] = {0: busy}
    snap["machine total"] = {0: total}
    return snap


def cpu_delta(before: Snapshot, after: Snapshot) -> dict[str, float]:
    """CPU seconds between two snapshots, by name (processes gone by `after` count 0)."""
    delta = {}
    for name, pids in after.items():
        earlier = before.get(name, {})
        delta[name] = round(sum(cpu - earlier.get(pid, 0.0) for pid, cpu in pids.items()), 3)
    return delta


# --------------------------------------------------------------------------- database work

DB_COUNTERS = """
    SELECT xact_commit, xact_rollback, tup_inserted, tup_updated, tup_deleted, tup_fetched
    FROM pg_stat_database WHERE datname = current_database()
"""


async def db_counters(conninfo: str) -> dict[str, int]:
    """The run database's transaction and row counters (PostgreSQL updates them within ~1 s)."""
    async with await db.connect(conninfo, autocommit=True) as conn:
        cursor = await conn.execute(DB_COUNTERS)
        row: Any = await cursor.fetchone()
        names = [c.name for c in cursor.description or ()]
    return dict(zip(names, (int(v) for v in row), strict=True))


# --------------------------------------------------------------------------- progress

PROGRESS = """
    SELECT (SELECT count(*) FROM outbox) AS pending,
           (SELECT coalesce(extract(epoch FROM clock_timestamp() - min(created_at)), 0)
              FROM outbox) AS oldest,
           (SELECT count(*) FROM invoices) AS invoices,
           (SELECT count(*) FROM email_notifications) AS emails,
           (SELECT count(*) FROM production_submissions) AS productions,
           (SELECT count(*) FROM checkouts WHERE state = 'FAILED') AS failed,
           (SELECT count(*) FROM checkouts WHERE state IN ('PAID', 'FAILED')) AS moved
"""


@dataclass
class Sample:
    at: float  # time.time()
    pending: int
    oldest_s: float
    done: int  # checkouts with all three effects, or FAILED (an estimate: min of the counts)


@dataclass
class Progress:
    """Samples the outbox backlog and the number of finished checkouts every `interval` s."""

    conninfo: str
    interval: float = 0.5
    samples: list[Sample] = field(default_factory=list)
    done: int = 0
    activity: int = 0  # grows whenever any checkout moves a step (for stall detection)
    _task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Progress:
        self._conn = await db.connect(self.conninfo, autocommit=True)
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._conn.close()

    async def sample(self) -> Sample:
        cursor = await self._conn.execute(PROGRESS)
        row: Any = await cursor.fetchone()
        pending, oldest, invoices, emails, productions, failed, moved = row
        done = min(invoices, emails, productions) + failed
        self.activity = invoices + emails + productions + moved
        sample = Sample(time.time(), int(pending), float(oldest), int(done))
        self.done = sample.done
        self.samples.append(sample)
        return sample

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            with contextlib.suppress(psycopg.Error):
                await self.sample()
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))

    def lag(self, start: float, end: float) -> dict[str, float | int | None]:
        """Outbox backlog over the samples taken in [start, end] (wall clock)."""
        inside = [s for s in self.samples if start <= s.at <= end]
        if not inside:
            return {
                "samples": 0,
                "max_pending_rows": None,
                "mean_pending_rows": None,
                "max_oldest_age_s": None,
                "mean_oldest_age_s": None,
            }
        return {
            "samples": len(inside),
            "max_pending_rows": max(s.pending for s in inside),
            "mean_pending_rows": round(sum(s.pending for s in inside) / len(inside), 1),
            "max_oldest_age_s": round(max(s.oldest_s for s in inside), 3),
            "mean_oldest_age_s": round(sum(s.oldest_s for s in inside) / len(inside), 3),
        }
