"""Issue 13 end to end: deadlines, reconciliation, late answers and stuck work, with the
system started as a user would (`checkout up`) and a short payment deadline set in its
environment (CHECKOUT_PAYMENT_DEADLINE=2). No test sleeps for a deadline: each polls for
the outcome the deadline must bring about.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from infra.db.session import create_engine
from tests.support.polling import eventually
from tests.support.system import System, cli, outage

pytestmark = pytest.mark.e2e

DEADLINE = "2"


@pytest.fixture(scope="module")
def system_env(system_env: dict[str, str]) -> dict[str, str]:
    """The e2e system's environment with a short payment deadline, and an HTTP timeout
    longer than the simulated slow charge (10 s), so that a charge can outlive its
    checkout's deadline."""
    return {**system_env, "CHECKOUT_PAYMENT_DEADLINE": DEADLINE, "CHECKOUT_HTTP_TIMEOUT": "15"}


async def start(client: httpx.AsyncClient, system: System, amount: str) -> tuple[str, str]:
    order = (
        await client.post(
            f"{system.api}/orders",
            json={
                "order_name": f"Deadline poster {amount}",
                "amount": amount,
                "customer": {"email": "late@example.com", "name": "Late"},
            },
        )
    ).json()
    checkout = (await client.post(f"{system.api}/orders/{order['order_id']}/checkout")).json()
    return order["order_id"], checkout["checkout_id"]


async def read(client: httpx.AsyncClient, url: str) -> Any:
    """GET `url` as JSON. A 503 is the API's "retry shortly" (its database out of reach a
    moment, its key check with it), and is asked again, as a client would."""
    answered = await eventually(
        lambda: client.get(url),
        until=lambda r: r.status_code != 503,
        timeout=30,
        interval=0.5,
        what=f"{url} to answer",
    )
    return answered.json()


async def checkout_of(client: httpx.AsyncClient, system: System, checkout_id: str) -> Any:
    return await read(client, f"{system.api}/checkouts/{checkout_id}")


async def order_of(client: httpx.AsyncClient, system: System, order_id: str) -> Any:
    return await read(client, f"{system.api}/orders/{order_id}")


async def payments_with(client: httpx.AsyncClient, system: System, key: str) -> list[Any]:
    found = (await client.get(f"{system.mocks}/mock/payments?include=status_code")).json()
    return [e for e in found if e["idempotency_key"] == key]


async def dlq_depth(system: System, key: str) -> int:
    _, listing = await cli(system, "dlq", "list", "--json")
    return int(next(q["messages"] for q in listing if q["queue"].endswith(f".{key}")))


async def events(system: System, checkout_id: str, kind: str) -> int:
    engine = create_engine(system.settings, pool_size=1)
    try:
        async with engine.connect() as conn:
            found = await conn.execute(
                text("SELECT count(*) FROM checkout_events WHERE checkout_id = :c AND kind = :k"),
                {"c": checkout_id, "k": kind},
            )
            return int(found.scalar_one())
    finally:
        await engine.dispose()


@pytest.fixture
async def payment_dlq_purged_after(system: System) -> AsyncIterator[None]:
    """The payment dead-letter queue emptied after the test, whatever its outcome: the
    charges it parked are left for no later test."""
    yield
    await cli(system, "dlq", "purge", "payment", "--all", "--yes", "--reason", "test over")


def step_names(checkout: Any) -> list[str]:
    return [s["name"] for s in checkout["steps"]]


async def test_an_outage_past_the_deadline_ends_in_payment_timeout_and_a_replay_charges_nothing(
    system: System,
) -> None:
    async with httpx.AsyncClient(headers=system.auth) as client:
        async with outage(client, "payments", mocks=system.mocks):
            order_id, checkout_id = await start(client, system, "40.00")
            # The charge gives up into the dead-letter queue; the deadline fires and its
            # reconciliation gets no answer either: the checkout waits, PAYMENT_PENDING.
            await eventually(
                lambda: dlq_depth(system, "payment"),
                until=lambda n: n >= 1,
                timeout=60,
                what="the charge dead-lettered",
            )
            pending = await eventually(
                lambda: checkout_of(client, system, checkout_id),
                until=lambda c: "payment.reconciliation" in step_names(c),
                timeout=60,
                what="a reconciliation without an answer",
            )
            assert pending["state"] == "PAYMENT_PENDING"
            assert "deadline.fired" in step_names(pending)

            status, report = await cli(system, "stuck", "--older-than", "1s", "--json")
            assert status == 1
            [item] = [s for s in report["stuck"] if s["id"] == checkout_id]
            waits = {w["what"]: w for w in item["waiting_for"]}
            assert (
                waits["dead_letter"]["detail"]
                .split(" in ")[1]
                .startswith(f"{system.env['CHECKOUT_NAMESPACE']}.payment.dlq")
            )
            assert waits["dead_letter"]["repair"].startswith("checkout dlq replay payment")
            assert "payment deadline at" in waits["deadline"]["detail"]

        # The service answers again: the next reconciliation finds no charge.
        failed = await eventually(
            lambda: checkout_of(client, system, checkout_id),
            until=lambda c: c["state"] == "FAILED",
            timeout=90,
            what="FAILED after the outage",
        )
        assert failed["failure_reason"] == "payment_timeout"
        names = step_names(failed)
        # Then only its looks for a charge that landed late (none did: nothing to refund).
        after = names[names.index("payment.timed_out") + 1 :]
        assert set(after) <= {"late_charge.lookup", "late_charge.none"}, names
        assert (await order_of(client, system, order_id))["status"] == "FAILED"
        [entry] = await payments_with(client, system, checkout_id)
        attempts = entry["attempts"]
        assert entry["status_code"] is None  # every attempt met the outage: nothing charged

        # The parked charge, replayed, charges nothing: its checkout is final.
        status, summary = await cli(
            system, "dlq", "replay", "payment", "--all", "--reason", "payment outage over"
        )
        assert status == 0, summary
        await eventually(
            lambda: events(system, checkout_id, "message.replayed"),
            until=lambda n: n >= 1,
            what="the replayed charge received",
        )
        await eventually(lambda: dlq_depth(system, "payment"), until=lambda n: n == 0)
        [entry] = await payments_with(client, system, checkout_id)
        assert (entry["attempts"], entry["status_code"]) == (attempts, None)
        assert (await checkout_of(client, system, checkout_id))["state"] == "FAILED"


async def test_a_charge_slower_than_the_deadline_fails_the_checkout_then_is_refunded(
    system: System,
) -> None:
    async with httpx.AsyncClient(headers=system.auth) as client:
        order_id, checkout_id = await start(client, system, "50.03")  # answers after 10 s
        failed = await eventually(
            lambda: checkout_of(client, system, checkout_id),
            until=lambda c: c["state"] == "FAILED",
            timeout=30,
            what="FAILED by the deadline while the charge is in flight",
        )
        assert failed["failure_reason"] == "payment_timeout"
        refunded = await eventually(
            lambda: order_of(client, system, order_id),
            until=lambda o: o["payment"]["status"] == "REFUNDED",
            timeout=60,
            what="the late charge refunded",
        )
        assert refunded["status"] == "FAILED"  # nobody pays for a failed checkout
        names = step_names(await checkout_of(client, system, checkout_id))
        assert names.index("payment.timed_out") < names.index("payment.late_success")
        refunds = (await client.get(f"{system.mocks}/mock/refunds")).json()
        [charge] = await payments_with(client, system, checkout_id)
        ours = [r for r in refunds if charge["response"]["payment_id"] in json.dumps(r)]
        assert len(ours) == 1


def _saga_pid(namespace: str) -> int | None:
    """The saga part running now in the system of `namespace` (None: none is)."""
    wanted = f"CHECKOUT_NAMESPACE={namespace}".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if b"infra.cli" not in argv or b"saga" not in argv:
                continue
            if wanted in (proc / "environ").read_bytes().split(b"\0"):
                return int(proc.name)
        except OSError:
            continue
    return None


async def test_a_deadline_pending_when_the_saga_is_killed_fires_once_after_its_restart(
    system: System, payment_dlq_purged_after: None
) -> None:
    async with httpx.AsyncClient(headers=system.auth) as client:
        async with outage(client, "payments", mocks=system.mocks):
            _, checkout_id = await start(client, system, "60.00")
            namespace = system.env["CHECKOUT_NAMESPACE"]
            killed = _saga_pid(namespace)
            assert killed is not None, "no saga part running"
            os.kill(killed, signal.SIGKILL)  # its deadline is due in 2 s; it is not running
            killed_at = datetime.now(UTC)
            await eventually(
                lambda: asyncio.to_thread(_saga_pid, namespace),
                until=lambda pid: pid is not None and pid != killed,
                timeout=30,
                what="the saga restarted",
            )
            # The restarted saga fires the deadline the killed one left pending (and its
            # redelivered charge, still meeting the outage, gives up into the DLQ).
            pending = await eventually(
                lambda: checkout_of(client, system, checkout_id),
                until=lambda c: "payment.reconciliation" in step_names(c),
                timeout=60,
                what="the deadline fired after the restart",
            )
            await eventually(
                lambda: dlq_depth(system, "payment"),
                until=lambda n: n >= 1,
                timeout=60,
                what="the charge dead-lettered",
            )
        first = next(s for s in pending["steps"] if s["name"] == "deadline.fired")
        assert datetime.fromisoformat(first["at"]) > killed_at
        failed = await eventually(
            lambda: checkout_of(client, system, checkout_id),
            until=lambda c: c["state"] == "FAILED",
            timeout=90,
            what="FAILED by the next reconciliation",
        )
        assert failed["failure_reason"] == "payment_timeout"
        fired = [s["detail"] for s in failed["steps"] if s["name"] == "deadline.fired"]
        # Each firing once: time 1, time 2, ... without a repeat.
        assert len(fired) == len(set(fired)), fired


async def test_two_saga_instances_fire_each_deadline_once(
    system: System, payment_dlq_purged_after: None
) -> None:
    """A second `checkout saga` beside the one `checkout up` runs: both claim deadlines."""
    second = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "infra.cli",
        "saga",
        env={**system.env, "CHECKOUT_HEALTH_PORT": "0"},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with httpx.AsyncClient(headers=system.auth) as client:
            async with outage(client, "payments", mocks=system.mocks):
                started = [await start(client, system, f"7{n}.00") for n in range(6)]
                ids = [checkout_id for _, checkout_id in started]

                async def reconciled() -> int:
                    found = [await checkout_of(client, system, c) for c in ids]
                    return sum("payment.reconciliation" in step_names(c) for c in found)

                await eventually(
                    reconciled, until=lambda n: n == len(ids), timeout=60, what="every deadline"
                )
                await eventually(
                    lambda: dlq_depth(system, "payment"),
                    until=lambda n: n >= len(ids),
                    timeout=60,
                    what="every charge dead-lettered",
                )
            for checkout_id in ids:
                failed = await eventually(
                    partial(checkout_of, client, system, checkout_id),
                    until=lambda c: c["state"] == "FAILED",
                    timeout=90,
                    what="FAILED by a reconciliation",
                )
                assert failed["failure_reason"] == "payment_timeout"
                fired = [s["detail"] for s in failed["steps"] if s["name"] == "deadline.fired"]
                assert fired
                assert len(fired) == len(set(fired)), fired  # no firing twice
                done = [s for s in failed["steps"] if s["name"] == "payment.timed_out"]
                assert len(done) == 1
    finally:
        second.kill()
        await second.wait()


async def test_a_cancellation_waits_through_an_outage_listed_as_stuck_then_follows_the_checkout(
    system: System,
) -> None:
    async with httpx.AsyncClient(headers=system.auth) as client:

        async def cancellation() -> Any:
            return (await client.get(f"{system.api}/cancellations/{cancellation_id}")).json()

        async with outage(client, "payments", mocks=system.mocks):
            order_id, checkout_id = await start(client, system, "45.00")
            requested = await client.post(
                f"{system.api}/orders/{order_id}/cancel", json={"reason": "taking too long"}
            )
            assert requested.json()["state"] == "WAITING_FOR_CHECKOUT"
            cancellation_id = requested.json()["cancellation_id"]
            # Its deadline (the checkout's plus a margin) fires while the checkout is still
            # in flight: it keeps waiting, and says so.
            waiting = await eventually(
                cancellation,
                until=lambda c: "deadline.fired" in step_names(c),
                timeout=60,
                what="the cancellation's deadline fired",
            )
            assert waiting["state"] == "WAITING_FOR_CHECKOUT"
            status, report = await cli(system, "stuck", "--older-than", "1s", "--json")
            assert status == 1
            [item] = [s for s in report["stuck"] if s["id"] == cancellation_id]
            waits = {w["what"]: w for w in item["waiting_for"]}
            assert waits["deadline"]["detail"].startswith("checkout deadline at ")
            assert waits["checkout"]["detail"] == f"checkout {checkout_id} to end"

        # The service answers again; the checkout ends, and the cancellation with it.
        final = await eventually(
            cancellation,
            until=lambda c: c["state"] in ("CANCELLED", "REJECTED"),
            timeout=90,
            what="the cancellation ended after the checkout",
        )
        assert final["state"] == "CANCELLED"
        assert (await order_of(client, system, order_id))["status"] == "CANCELLED"
        assert await events(system, cancellation_id, "deadline.cancelled") == 1
