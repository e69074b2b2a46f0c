"""The benchmark's report: tables on the terminal (rich) and JSON under bench/results/.

`write()` saves `<results>/<timestamp>.json` and `<results>/latest.json` (the same
document); `show()` prints it. The JSON is the record: every figure, the machine it was
measured on, the settings, and the raw limits the figures are ratios to.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

RESULTS = Path(__file__).with_name("results")

# The targets (the report's "target" column; a benchmark reports, it does not fail).
TARGETS = {
    "full_speed_completed_per_s": (">=", 400.0),
    "offered_p99_post_to_paid_ms": ("<", 150.0),
    "offered_p99_post_to_last_effect_ms": ("<", 300.0),
    "relay_alone_share_of_raw_publish": (">=", 0.80),
    "search_p99_ms": ("<", 20.0),
    "max_steady_rss_mb": ("<", 150.0),
}


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        mem_kb = int(re.findall(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())[0])
    except (OSError, IndexError):
        mem_kb = 0
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "hostname": platform.node(),
    }


def git_revision() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],  # noqa: S607
            capture_output=True,
            text=True,
            check=False,
            cwd=RESULTS.parent.parent,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],  # noqa: S607
            capture_output=True,
            text=True,
            check=False,
            cwd=RESULTS.parent.parent,
        )
    except OSError:
        return None
    rev = out.stdout.strip() or None
    return f"{rev}+dirty" if rev and dirty.stdout.strip() else rev


def write(report: dict[str, Any], results: Path = RESULTS, prefix: str = "") -> Path:
    """`<prefix><timestamp>.json` and `<prefix>latest.json` (the search mode: "search-")."""
    results.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    text = json.dumps(report, indent=2, default=str) + "\n"
    path = results / f"{prefix}{stamp}.json"
    path.write_text(text)
    (results / f"{prefix}latest.json").write_text(text)
    return path


# --------------------------------------------------------------------------- targets


def _get(report: dict[str, Any], *keys: str) -> Any:
    node: Any = report
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def measured_targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per target: what was measured, the target, whether it is met (None: not run)."""
    rss = [
        p.get("steady_rss_mb")
        for p in (report.get("processes") or {}).values()
        if p.get("steady_rss_mb") is not None
    ]
    values = {
        "full_speed_completed_per_s": _get(report, "phases", "full_speed", "completed_per_s"),
        "offered_p99_post_to_paid_ms": _get(
            report, "phases", "offered", "latency_ms", "post_to_paid", "p99"
        ),
        "offered_p99_post_to_last_effect_ms": _get(
            report, "phases", "offered", "latency_ms", "post_to_last_effect", "p99"
        ),
        "relay_alone_share_of_raw_publish": _get(report, "ratios", "relay_alone_to_raw_publish"),
        "search_p99_ms": _get(report, "search", "latency_ms", "all", "p99"),
        "max_steady_rss_mb": max(rss) if rss else None,
    }
    rows = []
    for name, (op, target) in TARGETS.items():
        value = values[name]
        met = None if value is None else (value >= target if op == ">=" else value < target)
        rows.append({"name": name, "measured": value, "target": f"{op} {target:g}", "met": met})
    return rows


# --------------------------------------------------------------------------- terminal


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _lat(phase: dict[str, Any] | None, key: str) -> str:
    lat = (phase or {}).get("latency_ms", {}).get(key) or {}
    if not lat.get("n"):
        return "-"
    return " / ".join(_fmt(lat.get(q), 0) for q in ("p50", "p90", "p99", "max"))


def show(report: dict[str, Any], console: Console | None = None) -> None:
    # On a terminal, its width; in a log or a pipe, wide enough for the tables.
    console = console or Console(width=None if sys.stdout.isatty() else 140)
    m = report.get("machine", {})
    console.rule("[bold]checkout benchmark")
    console.print(
        f"{m.get('cpus')} CPUs {m.get('cpu_model')}, {m.get('memory_gib')} GiB, "
        f"PostgreSQL {m.get('postgresql', '?')}, RabbitMQ {m.get('rabbitmq', '?')}, "
        f"Python {m.get('python')}; revision {report.get('revision')}"
        + (
            f"; HTTP client {_get(report, 'config', 'http_client')}"
            f"; copies {_get(report, 'config', 'copies')}"
            if report.get("phases")
            else ""
        )
    )

    raw = report.get("raw") or {}
    if raw:
        table = Table(title="What the machine can do at all (same run, system idle)")
        table.add_column("measure")
        table.add_column("per s", justify="right")
        table.add_column("detail")
        for key, label in (
            ("pg_two_insert_tx", "two-insert transactions (psycopg)"),
            ("amqp_confirmed_publish", "confirmed publishes (aio-pika)"),
            ("relay_alone", "relay alone, rows published"),
        ):
            if raw.get(key):
                table.add_row(label, _fmt(raw[key].get("per_s")), raw[key].get("what", ""))
        console.print(table)

    phases = report.get("phases") or {}
    if phases:
        _show_phases(console, report, phases)
    search = report.get("search")
    if search:
        _show_search(console, search)
    _show_outcome(console, report)


def _show_phases(console: Console, report: dict[str, Any], phases: dict[str, Any]) -> None:
    offered, full = phases.get("offered"), phases.get("full_speed")
    table = Table(title="Checkouts")
    table.add_column("figure")
    table.add_column(f"offered {_fmt((offered or {}).get('offered_rate'), 0)}/s", justify="right")
    table.add_column("full speed", justify="right")
    table.add_column("target", justify="right")

    def both(key: str, digits: int = 1) -> tuple[str, str]:
        return _fmt((offered or {}).get(key), digits), _fmt((full or {}).get(key), digits)

    table.add_row("window (s)", *both("window_s"), "")
    table.add_row(
        "sent / accepted",
        *(
            f"{_fmt(p.get('sent'))} / {_fmt(p.get('accepted'))}" if p else "-"
            for p in (offered, full)
        ),
        "",
    )
    table.add_row("accepted per s (API)", *both("accepted_per_s"), "")
    table.add_row("completed per s (end to end)", *both("completed_per_s"), ">= 400 (full)")
    table.add_row(
        "  ÷ raw two-insert tx/s",
        *(_fmt(_get(p or {}, "ratios", "completed_to_raw_tx"), 3) for p in (offered, full)),
        "",
    )
    table.add_row(
        "POST→PAID ms p50/p90/p99/max",
        _lat(offered, "post_to_paid"),
        _lat(full, "post_to_paid"),
        "p99 < 150 (100/s)",
    )
    table.add_row(
        "POST→last effect ms p50/p90/p99/max",
        _lat(offered, "post_to_last_effect"),
        _lat(full, "post_to_last_effect"),
        "p99 < 300 (100/s)",
    )
    table.add_row(
        "POST answer ms p50/p90/p99/max", _lat(offered, "http_post"), _lat(full, "http_post"), ""
    )
    table.add_row("unfinished after drain", *both("unfinished"), "")
    table.add_row(
        "outbox rows pending max / mean",
        *(
            f"{_fmt(_get(p or {}, 'outbox', 'max_pending_rows'))} / "
            f"{_fmt(_get(p or {}, 'outbox', 'mean_pending_rows'))}"
            if p
            else "-"
            for p in (offered, full)
        ),
        "",
    )
    table.add_row(
        "outbox oldest age s max",
        *(_fmt(_get(p or {}, "outbox", "max_oldest_age_s"), 3) for p in (offered, full)),
        "",
    )
    table.add_row(
        "machine CPU busy (share of all cores)",
        *(_fmt(_get(p or {}, "machine_cpu_busy_share"), 2) for p in (offered, full)),
        "",
    )
    table.add_row(
        "DB transactions / rows inserted per checkout",
        *(
            f"{_fmt(_get(p or {}, 'database_per_checkout', 'xact_commit'))} / "
            f"{_fmt(_get(p or {}, 'database_per_checkout', 'tup_inserted'))}"
            for p in (offered, full)
        ),
        "",
    )
    table.add_row(
        "CPU ms per checkout, whole machine",
        *(_fmt(_get(p or {}, "cpu_ms_per_checkout", "machine busy"), 2) for p in (offered, full)),
        "",
    )
    console.print(table)

    procs = report.get("processes") or {}
    names = [*procs, "postgresql", "rabbitmq", "bench driver"]
    idle = report.get("idle_cpu_share") or {}
    table = Table(title="Per process: CPU ms per completed checkout, memory (MiB)")
    table.add_column("process")
    table.add_column("CPU ms offered", justify="right")
    table.add_column("CPU ms full", justify="right")
    table.add_column("idle CPU %", justify="right")
    table.add_column("RSS steady", justify="right")
    table.add_column("RSS peak", justify="right")
    for name in names:
        info = procs.get(name, {})
        table.add_row(
            name,
            _fmt(_get(offered or {}, "cpu_ms_per_checkout", name), 2),
            _fmt(_get(full or {}, "cpu_ms_per_checkout", name), 2),
            _fmt(100 * idle[name] if name in idle else None),
            _fmt(info.get("steady_rss_mb")),
            _fmt(info.get("peak_rss_mb")),
        )
    console.print(table)


def _show_search(console: Console, search: dict[str, Any]) -> None:
    if search:
        table = Table(title=f"GET /orders?name= on {_fmt(search.get('orders'))} orders")
        table.add_column("substrings")
        table.add_column("requests", justify="right")
        table.add_column("ms p50 / p90 / p99 / max", justify="right")
        for kind, lat in (search.get("latency_ms") or {}).items():
            table.add_row(
                kind,
                _fmt(lat.get("n")),
                " / ".join(_fmt(lat.get(q), 1) for q in ("p50", "p90", "p99", "max")),
            )
        console.print(table)
        console.print(
            f"loaded in {_fmt(search.get('load_seconds'))} s ({search.get('load_detail', '')})"
        )


def _show_outcome(console: Console, report: dict[str, Any]) -> None:
    table = Table(title="Targets (reported, not enforced)")
    table.add_column("target")
    table.add_column("measured", justify="right")
    table.add_column("target", justify="right")
    table.add_column("met")
    search_only = report.get("kind") == "checkout-benchmark-search"
    for row in report.get("targets") or []:
        if search_only and row["measured"] is None:
            continue
        met = {True: "[green]yes", False: "[red]no", None: "-"}[row["met"]]
        table.add_row(row["name"], _fmt(row["measured"], 2), row["target"], met)
    console.print(table)

    check = report.get("check")
    if check:
        verdict = "[green]no loss, no duplicate" if check.get("ok") else "[red]FAILED"
        console.print(
            f"Exactly-once check ({check.get('copies')} copies of each worker): {verdict}"
        )
        for problem in check.get("problems", [])[:20]:
            console.print(f"  - {problem}")
    for part, profile in (report.get("profiles") or {}).items():
        table = Table(
            title=f"py-spy: {part} at full speed, {_fmt(profile.get('seconds_sampled'))} s "
            f"sampled; speedscope file {profile.get('file')}"
        )
        columns = (
            ("top_self", "self time in"),
            ("top_own", "under our frame"),
            ("self_by_package", "package"),
        )
        for _, title in columns:
            table.add_column("share", justify="right")
            table.add_column(title)
        lists = [profile.get(key) or [] for key, _ in columns]
        for i in range(min(12, max(len(rows) for rows in lists))):
            cells: list[str] = []
            for rows in lists:
                row = rows[i] if i < len(rows) else None
                cells += [f"{row['share']:.1%}", row["frame"]] if row else ["", ""]
            table.add_row(*cells)
        console.print(table)
    for note in report.get("notes") or []:
        console.print(f"[yellow]note:[/] {note}")
    if report.get("path"):
        console.print(f"JSON: {report['path']}")
