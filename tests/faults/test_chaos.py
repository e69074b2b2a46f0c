"""The system under fire: SIGKILLs, dropped broker connections, latency and resets to the
services, duplicates and poison messages, while checkouts and cancellations are in
flight; then the checker's verdict over everything that happened (see `checker.py`).

Bounded to `CHECKOUT_FAULTS_SECONDS` (60 by default) of faults; the seed is printed
(`CHECKOUT_FAULTS_SEED` replays the plan). The report is printed on every run.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import aio_pika
import httpx
import pytest

from infra.settings import Settings
from tests.faults import system as sysmod
from tests.faults.chaos import Chaos, Injector, Tap, Workload
from tests.faults.checker import Facts, check
from tests.faults.collect import gather_facts, wait_quiet
from tests.faults.conftest import fault_seconds
from tests.faults.replay import park_and_replay
from tests.faults.system import destroy_system, start_system

pytestmark = pytest.mark.faults

SECONDS = fault_seconds()
ORDERS_PER_SECOND = 1.2
SETTLE_TIMEOUT = sysmod.SETTLE_SECONDS


@pytest.mark.timeout(SECONDS + 180 + 2 * SETTLE_TIMEOUT)
async def test_every_checkout_ends_once_under_faults(
    settings: Settings, tmp_path: Path, fault_seed: int, capsys: pytest.CaptureFixture[str]
) -> None:
    began = time.monotonic()
    system = await start_system(settings, tmp_path / "parts")
    timings = {"start": time.monotonic() - began}
    print(f"parts started in {timings['start']:.1f}s; logs in {system.workdir}", flush=True)
    try:
        connection = await aio_pika.connect_robust(system.settings.rabbit_url.get_secret_value())
        async with connection, httpx.AsyncClient(timeout=30, headers=system.auth) as client:
            tap = Tap(connection, system.topology)
            await tap.start()
            injector = Injector(connection, system.topology)
            workload = Workload(
                system.api, random.Random(f"{fault_seed}-load"), round(SECONDS * ORDERS_PER_SECOND)
            )
            chaos = Chaos(system, tap, injector, random.Random(f"{fault_seed}-chaos"), SECONDS)

            mark = time.monotonic()
            await asyncio.gather(workload.run(client, SECONDS * 0.85), chaos.run())
            timings["chaos"] = time.monotonic() - mark
            system.heal()
            restarted = system.ensure_running()

            mark = time.monotonic()
            expected_dead = {(d, p.message_id) for p in injector.poison for d in p.expected_dlqs}
            settled, _, state = await wait_quiet(
                system, workload.accepted, expected_dead=expected_dead, timeout=SETTLE_TIMEOUT
            )
            timings["settle"] = time.monotonic() - mark
            print(f"settled={settled} in {timings['settle']:.1f}s {state}", flush=True)

            mark = time.monotonic()
            fixable = await park_and_replay(system, workload, tap, client, connection)
            settled_again, _, state = await wait_quiet(
                system, workload.accepted, expected_dead=expected_dead, timeout=SETTLE_TIMEOUT
            )
            timings["fixable"] = time.monotonic() - mark

            facts = Facts(
                seed=fault_seed,
                fault_seconds=timings["chaos"],
                accepted=workload.accepted,
                poison=injector.poison,
                fixable=fixable,
                faults=chaos.events,
                duplicates=injector.duplicates,
                settled=settled and settled_again,
                settle_seconds=timings["settle"],
            )
            await gather_facts(system, facts)
            facts.stats |= {
                "orders": len(workload.plans),
                "cancels": sum(1 for p in workload.plans if p.cancellation_ids),
                "client_errors": len(workload.errors),
                "restarted_at_end": len(restarted),
                "startup_s": round(timings["start"], 1),
                "fixable_phase_s": round(timings["fixable"], 1),
                "total_s": round(time.monotonic() - began, 1),
            }
        report = check(facts)
        # Shown on every run, CI's included, not only on failure or with -s.
        with capsys.disabled():
            print("\n" + report.text(), flush=True)
        (system.workdir / "report.txt").write_text(report.text() + "\n")
        if workload.errors:
            print("client errors:", *workload.errors[:10], sep="\n  ")
        assert report.ok, f"{report.text()}\n\nlogs in {system.workdir}\n" + system.tails(lines=12)
    except Exception as exc:
        if "FAULT RUN REPORT" not in str(exc):  # else the report already says it all
            print(f"the run broke off; logs in {system.workdir}\n{system.tails(lines=15)}")
        raise
    finally:
        await destroy_system(system)
