"""The checker can see a failure: with the consumers' inbox switched off, a duplicate
`OrderPaid` is applied a second time, and the checker must say so.

One system, two phases. With the inbox on, a late copy of an order's `OrderPaid` is
dropped by all three consumers and the checker passes. Then the three consumers are
restarted with `tests.faults.inbox_off` (the same command line, the inbox's claim always
claiming and its check never seeing), and the same happens to a second order: the
invoice consumer runs its insert again, the e-mail and production consumers call
their service again. The service's idempotency key still hides the repeat from the
customer (one e-mail, one production order), which is exactly why the checker looks
at the consumers' own records and at repeated calls nothing explains.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import aio_pika
import httpx
import pytest

from infra.settings import Settings
from tests.faults.chaos import Injector, Tap, Workload
from tests.faults.checker import Facts, Report, applied_counts, check
from tests.faults.collect import gather_facts, read_applied, wait_quiet
from tests.faults.system import CONSUMERS, FaultSystem, destroy_system, start_system
from tests.support.polling import eventually

pytestmark = pytest.mark.faults


async def _paid_and_applied(
    system: FaultSystem, workload: Workload, tap: Tap, client: httpx.AsyncClient, tag: str
) -> str:
    """Check out one order; return its OrderPaid message id once all three consumers applied it."""
    plan = await workload.place(client, "normal", tag=tag)
    await workload.checkout(client, plan)
    quiet, _, state = await wait_quiet(system, workload.accepted, timeout=30)
    assert quiet, state
    message = tap.order_paid(plan.order_id)
    assert message is not None
    assert message.message_id is not None
    await _applied(system, message.message_id, times=1)
    return message.message_id


async def _applied(system: FaultSystem, message_id: str, *, times: int) -> None:
    async def counts() -> Counter[str]:
        applied = applied_counts(await read_applied(system))
        return Counter({c: n for (c, m), n in applied.items() if m == message_id})

    await eventually(
        counts,
        until=lambda c: all(c[name] >= times for name in CONSUMERS),
        timeout=30,
        interval=0.2,
        what=f"{message_id} applied {times}x by every consumer",
    )


async def _skipped(system: FaultSystem, message_id: str) -> None:
    async def skips() -> int:
        n = 0
        for name in CONSUMERS:
            for line in system.parts[name].log.read_text(errors="replace").splitlines():
                if message_id in line and "duplicate message skipped" in line:
                    n += 1
        return n

    await eventually(
        skips,
        until=lambda n: n >= len(CONSUMERS),
        timeout=30,
        interval=0.2,
        what=f"the copy of {message_id} skipped by every consumer",
    )


async def _report(
    system: FaultSystem, workload: Workload, injector: Injector, title: str
) -> Report:
    facts = Facts(seed=None, accepted=workload.accepted, duplicates=list(injector.duplicates))
    await gather_facts(system, facts)
    report = check(facts, title)
    print(report.text(), flush=True)
    return report


@pytest.mark.timeout(170)
async def test_the_checker_reports_duplicates_when_the_inbox_is_off(
    settings: Settings, tmp_path: Path
) -> None:
    system = await start_system(settings, tmp_path / "parts")
    try:
        connection = await aio_pika.connect_robust(system.settings.rabbit_url.get_secret_value())
        async with connection, httpx.AsyncClient(timeout=30, headers=system.auth) as client:
            tap = Tap(connection, system.topology)
            await tap.start()
            injector = Injector(connection, system.topology)
            workload = Workload(system.api, random.Random(7), 0)

            # Inbox on: the late copy is dropped, the checker passes.
            first = await _paid_and_applied(system, workload, tap, client, "inbox-on")
            await injector.duplicate(tap.by_id[first])
            await _skipped(system, first)
            before = await _report(system, workload, injector, "INBOX ON, A LATE COPY (no faults)")
            assert before.check("no duplicate applied").ok, before.text()

            # Inbox off: the same scenario applies the copy again.
            for name in CONSUMERS:
                part = system.parts[name]
                await system.kill(name)
                part.argv = ["-m", "tests.faults.inbox_off", *part.argv[2:]]
                part.start()
            await system.wait_ready()
            second = await _paid_and_applied(system, workload, tap, client, "inbox-off")
            await injector.duplicate(tap.by_id[second])
            await _applied(system, second, times=2)
            quiet, _, state = await wait_quiet(system, workload.accepted, timeout=30)
            assert quiet, state
            after = await _report(system, workload, injector, "INBOX OFF, A LATE COPY")
    finally:
        await destroy_system(system)

    duplicates = after.check("no duplicate applied")
    assert not duplicates.ok, after.text()
    flagged = [p for p in duplicates.problems if second in p]
    assert all(p.startswith("duplicate applied") for p in duplicates.problems), flagged
    assert all(first not in p for p in duplicates.problems), duplicates.problems
    for consumer in CONSUMERS:  # each applied the copy a second time
        assert any(f"{consumer} applied {second} 2 times" in p for p in flagged), flagged
    for service in ("emails", "production"):  # ... and called its service again
        assert any(f"called {service} again for {second}" in p for p in flagged), flagged
    # What a customer sees is still one of each: only the checker's duplicate check sees it.
    for name in (
        "checkouts final",
        "one charge per paid order",
        "one of each effect per paid order",
    ):
        assert after.check(name).ok, after.text()
