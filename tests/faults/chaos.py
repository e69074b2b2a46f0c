"""What the fault run does to the system: load, kills, broker and network faults,
duplicates and poison messages, all drawn from one seeded `random.Random`.

The timing of processes is not reproducible, but the plan is: with the same seed the
same orders are placed and the same kinds of fault are drawn in the same order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aio_pika
import httpx
from aio_pika.abc import AbstractIncomingMessage

from contracts import SCHEMA_VERSION_HEADER
from infra.messaging.topology import Topology
from tests.faults import system as sysmod
from tests.faults.checker import Duplicate, FaultEvent, Poison
from tests.faults.system import FaultSystem

# ---- capturing and re-publishing what the system published -----------------------


@dataclass(frozen=True)
class Captured:
    exchange: str
    routing_key: str
    body: bytes
    message_id: str | None
    correlation_id: str | None
    message_type: str | None
    headers: dict[str, Any]
    timestamp: datetime | None

    def copy(self) -> aio_pika.Message:
        """The same message again: same body, id, type and headers."""
        return aio_pika.Message(
            self.body,
            message_id=self.message_id,
            correlation_id=self.correlation_id,
            type=self.message_type,
            content_type="application/json",
            timestamp=self.timestamp,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            headers=self.headers,
        )


class Tap:
    """A downstream team's queue on both exchanges: sees every event and saga message."""

    def __init__(self, connection: aio_pika.abc.AbstractConnection, topology: Topology) -> None:
        self._connection = connection
        self._topology = topology
        self.messages: list[Captured] = []
        self.by_id: dict[str, Captured] = {}

    async def start(self) -> None:
        channel = await self._connection.channel()
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(self._topology.orders_exchange, "order.#")
        await queue.bind(self._topology.internal_exchange, "#")
        await queue.consume(self._on_message, no_ack=True)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        captured = Captured(
            exchange=message.exchange or "",
            routing_key=message.routing_key or "",
            body=message.body,
            message_id=message.message_id,
            correlation_id=message.correlation_id,
            message_type=message.type,
            headers=dict(message.headers or {}),
            timestamp=message.timestamp,
        )
        self.messages.append(captured)
        if captured.message_id:
            self.by_id.setdefault(captured.message_id, captured)

    def order_paid(self, order_id: str) -> Captured | None:
        """The first OrderPaid published for `order_id`."""
        for m in self.messages:
            if m.message_type == "OrderPaid" and _order_of(m.body) == order_id:
                return m
        return None


def _order_of(body: bytes) -> str | None:
    try:
        decoded = json.loads(body)
    except ValueError:
        return None
    return str(decoded.get("order_id")) if isinstance(decoded, dict) else None


# ---- poison ------------------------------------------------------------------------

ORDERS_DLQS = ("invoice", "email", "production")


def _poison_plan(topology: Topology) -> list[tuple[str, str, str, tuple[str, ...]]]:
    """(kind, exchange, routing key, dead-letter queues it must end in)."""
    q = topology.queues
    orders = tuple(q[k].dlq for k in ORDERS_DLQS)
    return [
        ("undecodable", topology.orders_exchange, "order.paid", orders),
        ("schema-invalid", topology.orders_exchange, "order.paid", orders),
        ("unknown-type", topology.orders_exchange, "order.paid", orders),
        ("future-version", topology.orders_exchange, "order.paid", orders),
        ("unknown-type", topology.internal_exchange, "payment.charge", (q["payment"].dlq,)),
        ("no-such-checkout", topology.internal_exchange, "payment.charge", (q["payment"].dlq,)),
        ("undecodable", topology.internal_exchange, "payment.charge", (q["payment"].dlq,)),
        ("schema-invalid", topology.internal_exchange, "payment.charge", (q["payment"].dlq,)),
        # The cancellation's steps refuse what the sagas did not record (nothing refunded,
        # production not asked), and a body they cannot read.
        ("no-such-refund", topology.internal_exchange, "payment.refund", (q["refund"].dlq,)),
        ("schema-invalid", topology.internal_exchange, "payment.refund", (q["refund"].dlq,)),
        (
            "no-such-cancellation",
            topology.internal_exchange,
            "production.cancel",
            (q["production-cancel"].dlq,),
        ),
    ]


def _poison_message(kind: str, routing_key: str, message_id: str) -> aio_pika.Message:
    message_type = {
        "order.paid": "OrderPaid",
        "payment.charge": "ChargePayment",
        "payment.refund": "RefundPayment",
        "production.cancel": "CancelProductionOrder",
    }[routing_key]
    headers: dict[str, Any] = {SCHEMA_VERSION_HEADER: 1}
    if kind == "undecodable":
        body = b"\xff\xfe{this is not json"
    elif kind == "schema-invalid":
        body = json.dumps({"order_id": "not-a-uuid", "amount": "-1"}).encode()
    elif kind == "unknown-type":
        body, message_type = b"{}", "OrderShipped"
    elif kind == "future-version":
        headers[SCHEMA_VERSION_HEADER] = 99
        body = json.dumps({"order_id": str(uuid.uuid4()), "future": True}).encode()
    elif kind == "no-such-checkout":
        ids = {f"{name}_id": str(uuid.uuid4()) for name in ("checkout", "order", "payment")}
        body = json.dumps({**ids, "amount": "5.00", "currency": "EUR"}).encode()
    elif kind == "no-such-refund":
        names = ("refund", "payment", "order", "checkout", "cancellation")
        ids = {f"{name}_id": str(uuid.uuid4()) for name in names}
        fields = {"provider_payment_id": "pay-x", "amount": "5.00", "currency": "EUR"}
        extra = {"reason": "poison", "idempotency_key": ids["cancellation_id"]}
        body = json.dumps({**ids, **fields, **extra}).encode()
    elif kind == "no-such-cancellation":
        ids = {f"{name}_id": str(uuid.uuid4()) for name in ("cancellation", "order")}
        body = json.dumps(ids).encode()
    else:
        raise ValueError(kind)
    return aio_pika.Message(
        body,
        message_id=message_id,
        correlation_id=str(uuid.uuid4()),
        type=message_type,
        content_type="application/json",
        timestamp=datetime.now(UTC),
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        headers=headers,
    )


class Injector:
    """Publishes duplicates and poison on its own confirmed channel, and records them."""

    def __init__(self, connection: aio_pika.abc.AbstractConnection, topology: Topology) -> None:
        self._connection = connection
        self._topology = topology
        self._channel: aio_pika.abc.AbstractChannel | None = None
        self.duplicates: list[Duplicate] = []
        self.poison: list[Poison] = []
        self.duplicated: set[str] = set()

    async def _exchange(self, name: str) -> aio_pika.abc.AbstractExchange:
        if self._channel is None or self._channel.is_closed:
            self._channel = await self._connection.channel(publisher_confirms=True)
        return await self._channel.get_exchange(name, ensure=False)

    async def duplicate(self, message: Captured) -> None:
        exchange = await self._exchange(message.exchange)
        ts = time.time()
        await exchange.publish(message.copy(), message.routing_key)
        self.duplicated.add(message.message_id or "")
        self.duplicates.append(
            Duplicate(
                message.message_id or "", message.message_type or "", message.correlation_id, ts
            )
        )

    async def inject_poison(
        self, kind: str, exchange_name: str, routing_key: str, dlqs: tuple[str, ...]
    ) -> Poison:
        message_id = str(uuid.uuid4())
        exchange = await self._exchange(exchange_name)
        ts = time.time()
        await exchange.publish(_poison_message(kind, routing_key, message_id), routing_key)
        poison = Poison(message_id, kind, f"{exchange_name}/{routing_key}", dlqs, ts)
        self.poison.append(poison)
        return poison


# ---- the load ---------------------------------------------------------------------


@dataclass
class OrderPlan:
    order_id: str
    amount: str
    behaviour: str  # normal | declined | flaky | slow
    mode: str  # single | concurrent-pair | same-key-twice
    checkout_ids: set[str] = field(default_factory=set)
    statuses: list[int] = field(default_factory=list)
    # Cancelled this long after its checkout was accepted (None: not cancelled): some
    # while the charge is in flight, some once it is paid, while the faults go on.
    cancel_after: float | None = None
    cancellation_ids: set[str] = field(default_factory=set)


def _amount(rng: random.Random, behaviour: str) -> str:
    cents = {"declined": 1, "flaky": 2, "slow": 3}.get(behaviour)
    if cents is None:
        cents = rng.choice([0, 10, 25, 50, 75, 90, 99])
    return f"{rng.randint(5, 250)}.{cents:02d}"


class Workload:
    """Orders placed over HTTP up front, checked out at a steady pace."""

    BEHAVIOURS = (("normal", 62), ("declined", 15), ("flaky", 15), ("slow", 8))
    MODES = (("single", 80), ("concurrent-pair", 10), ("same-key-twice", 10))
    CANCEL_SHARE = 0.2  # of the fault run's orders
    CANCEL_WITHIN = 2.0  # seconds after the checkout

    def __init__(self, api: str, rng: random.Random, count: int) -> None:
        self.api = api
        self.rng = rng
        self.count = count
        self.plans: list[OrderPlan] = []
        self.errors: list[str] = []

    @property
    def accepted(self) -> dict[str, str]:
        return {c: p.order_id for p in self.plans for c in p.checkout_ids}

    def _pick(self, table: tuple[tuple[str, int], ...]) -> str:
        names, weights = zip(*table, strict=True)
        return str(self.rng.choices(names, weights=weights)[0])

    async def place(
        self, client: httpx.AsyncClient, behaviour: str | None = None, tag: str = "faults"
    ) -> OrderPlan:
        behaviour = behaviour or self._pick(self.BEHAVIOURS)
        mode = self._pick(self.MODES) if tag == "faults" else "single"
        amount = _amount(self.rng, behaviour)
        response = await client.post(
            f"{self.api}/orders",
            json={
                "order_name": f"{tag} poster {len(self.plans) + 1}",
                "amount": amount,
                "currency": "EUR",
                "customer": {"email": f"buyer{len(self.plans) + 1}@example.com", "name": "Ada"},
            },
        )
        assert response.status_code == 201, response.text
        plan = OrderPlan(response.json()["order_id"], amount, behaviour, mode)
        if tag == "faults" and self.rng.random() < self.CANCEL_SHARE:
            plan.cancel_after = round(self.rng.uniform(0, self.CANCEL_WITHIN), 2)
        self.plans.append(plan)
        return plan

    async def _post_checkout(self, client: httpx.AsyncClient, plan: OrderPlan, key: str) -> None:
        for attempt in range(4):
            try:
                response = await client.post(
                    f"{self.api}/orders/{plan.order_id}/checkout",
                    headers={"Idempotency-Key": key},
                )
            except httpx.TransportError as exc:
                self.errors.append(f"{plan.order_id} attempt {attempt + 1}: {exc!r}")
                await asyncio.sleep(0.2)
                continue
            plan.statuses.append(response.status_code)
            if response.status_code == 202:
                plan.checkout_ids.add(response.json()["checkout_id"])
            else:
                self.errors.append(f"{plan.order_id}: {response.status_code} {response.text[:200]}")
            return

    async def checkout(self, client: httpx.AsyncClient, plan: OrderPlan) -> None:
        key = f"faults-{plan.order_id}"
        if plan.mode == "concurrent-pair":
            await asyncio.gather(
                self._post_checkout(client, plan, key + "-a"),
                self._post_checkout(client, plan, key + "-b"),
            )
        elif plan.mode == "same-key-twice":
            await self._post_checkout(client, plan, key)
            await self._post_checkout(client, plan, key)
        else:
            await self._post_checkout(client, plan, key)
        if plan.cancel_after is not None:
            # The plan's own timing, drawn up front: not a wait for an outcome.
            await asyncio.sleep(plan.cancel_after)
            await self._post_cancel(client, plan, f"faults-cancel-{plan.order_id}")

    async def _post_cancel(self, client: httpx.AsyncClient, plan: OrderPlan, key: str) -> None:
        for attempt in range(4):
            try:
                response = await client.post(
                    f"{self.api}/orders/{plan.order_id}/cancel",
                    json={"reason": "fault run"},
                    headers={"Idempotency-Key": key},
                )
            except httpx.TransportError as exc:
                self.errors.append(f"{plan.order_id} cancel {attempt + 1}: {exc!r}")
                await asyncio.sleep(0.2)
                continue
            if response.status_code == 202:
                plan.cancellation_ids.add(response.json()["cancellation_id"])
            else:
                self.errors.append(
                    f"{plan.order_id} cancel: {response.status_code} {response.text[:200]}"
                )
            return

    async def run(self, client: httpx.AsyncClient, seconds: float) -> None:
        """Place every order, then check them out evenly over `seconds`."""
        for _ in range(self.count):
            await self.place(client)
        pace = seconds / max(1, self.count)
        tasks = []
        for plan in list(self.plans):
            tasks.append(asyncio.create_task(self.checkout(client, plan)))
            await asyncio.sleep(pace)
        await asyncio.gather(*tasks)


# ---- the chaos ----------------------------------------------------------------------


class Chaos:
    """Draws one fault after another from the seeded rng until the time is up."""

    # Weights, per draw. A restart costs about 2 s of CPU and rabbitmqctl about 0.7 s:
    # both are kept rare enough for a 2-core machine.
    ACTIONS = (
        ("kill", 12),
        ("broker-close", 4),
        ("broker-reset", 7),
        ("broker-latency", 5),
        ("latency", 18),
        ("reset", 18),
        *((("payment-outage", 4), ("payment-slow", 4)) if sysmod.DEADLINES else ()),
        ("duplicate", 26),
        ("pause", 10),
    )

    def __init__(
        self,
        system: FaultSystem,
        tap: Tap,
        injector: Injector,
        rng: random.Random,
        seconds: float,
    ) -> None:
        self.system = system
        self.tap = tap
        self.injector = injector
        self.rng = rng
        self.seconds = seconds
        self.events: list[FaultEvent] = []
        self._busy: dict[str, float] = {}  # target -> monotonic time it is free again
        self._tasks: set[asyncio.Task[None]] = set()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _free(self, target: str) -> bool:
        return self._busy.get(target, 0.0) <= time.monotonic()

    async def run(self) -> None:
        started = time.monotonic()
        end = started + self.seconds
        # The poison plan once per minute of chaos (at least once).
        plan = _poison_plan(self.system.topology) * max(1, round(self.seconds / 60))
        # Poison at seeded moments within the first 80% of the run.
        due = sorted((started + self.rng.uniform(0.05, 0.8) * self.seconds, item) for item in plan)
        names, weights = zip(*self.ACTIONS, strict=True)
        while time.monotonic() < end:
            while due and due[0][0] <= time.monotonic():
                _, (kind, exchange, key, dlqs) = due.pop(0)
                await self.injector.inject_poison(kind, exchange, key, dlqs)
            action = self.rng.choices(names, weights=weights)[0]
            await getattr(self, "_" + action.replace("-", "_"))()
            await asyncio.sleep(self.rng.uniform(0.25, 0.9))
        for _, (kind, exchange, key, dlqs) in due:  # a very short run: inject the rest
            await self.injector.inject_poison(kind, exchange, key, dlqs)
        if self._tasks:
            await asyncio.gather(*list(self._tasks))
        self.system.heal()

    async def _pause(self) -> None:
        """No fault this time."""

    # -- parts --

    async def _kill(self) -> None:
        target = self.rng.choice(sysmod.WORKERS)
        down = self.rng.uniform(0.2, 1.5)
        if not self._free(target):
            return
        self._busy[target] = time.monotonic() + down + 5

        async def kill_and_restart() -> None:
            ts = time.time()
            await self.system.kill(target)
            await asyncio.sleep(down)
            self.system.restart(target)
            self.events.append(
                FaultEvent(ts, "kill", target, until=time.time(), detail=f"down {down:.1f}s")
            )
            self._busy[target] = time.monotonic() + 1.0

        self._spawn(kill_and_restart())

    async def _broker_close(self) -> None:
        if sysmod.RABBITMQCTL is None or not self._free("rabbitmqctl"):
            return
        count = self.rng.randint(1, 2)
        pick = self.rng.random()
        self._busy["rabbitmqctl"] = time.monotonic() + 60

        async def close() -> None:
            try:
                connections = sorted(
                    await sysmod.broker_connections(self.system.namespace), key=lambda c: c[1]
                )
                if not connections:
                    return
                start = int(pick * len(connections))
                chosen = [connections[(start + i) % len(connections)] for i in range(count)]
                for pid, name in dict(chosen).items():
                    ts = time.time()
                    if await sysmod.close_broker_connection(pid, "fault test: dropped"):
                        part = sysmod.connection_part(name, self.system.namespace) or name
                        self.events.append(
                            FaultEvent(ts, "broker-close", part, until=time.time(), detail=name)
                        )
            finally:
                self._busy["rabbitmqctl"] = time.monotonic()

        self._spawn(close())

    async def _broker_reset(self) -> None:
        ts = time.time()
        dropped = self.system.broker_proxy.reset()
        for part in sysmod.BROKER_PROXIED:
            self.events.append(FaultEvent(ts, "broker-reset", part, detail=f"{dropped} conns"))

    async def _broker_latency(self) -> None:
        latency = self.rng.uniform(0.02, 0.25)
        window = self.rng.uniform(1.0, 3.0)
        if not self._free("broker"):
            return
        self._busy["broker"] = time.monotonic() + window + 0.5
        self._spawn(
            self._window(
                self.system.broker_proxy.name,
                latency,
                window,
                targets=sysmod.BROKER_PROXIED,
                kind="broker-latency",
            )
        )

    # -- services --

    async def _latency(self) -> None:
        service = self.rng.choice(sysmod.SERVICES)
        latency = self.rng.uniform(0.1, 1.0)  # each way
        window = self.rng.uniform(1.0, 3.0)
        if not self._free(service):
            return
        self._busy[service] = time.monotonic() + window + 1.0
        self._spawn(self._window(service, latency, window, targets=(service,), kind="latency"))

    async def _window(
        self,
        proxy_name: str,
        latency: float,
        window: float,
        *,
        targets: tuple[str, ...],
        kind: str,
    ) -> None:
        proxy = self.system.proxies[proxy_name]
        ts = time.time()
        proxy.set_latency(latency)
        try:
            await asyncio.sleep(window)
        finally:
            proxy.set_latency(0)
        for target in targets:
            self.events.append(
                FaultEvent(
                    ts, kind, target, until=time.time(), detail=f"+{latency * 1000:.0f}ms each way"
                )
            )

    async def _payment_outage(self) -> None:
        """The Payment Service unreachable for longer than the payment deadline: the
        checkouts in flight are reconciled (unanswered first, then found or not)."""
        if not self._free("payments"):
            return
        down = self.rng.uniform(sysmod.PAYMENT_DEADLINE + 1, sysmod.PAYMENT_DEADLINE + 5)
        # Kept clear of other payment faults a while after: the retries' budget (about
        # 35 s) must outlast the whole stretch the service is unusable.
        self._busy["payments"] = time.monotonic() + down + 8
        ts = time.time()
        self.system.service_proxies["payments"].refuse_for(down)
        self.events.append(
            FaultEvent(ts, "refuse", "payments", until=ts + down, detail=f"outage {down:.1f}s")
        )

    async def _payment_slow(self) -> None:
        """Charges slower than the payment deadline: each call takes longer than the
        deadline, so the reconciliation asks while the charge is still on its way."""
        latency = self.rng.uniform(1.5, 3.0)  # each way
        window = self.rng.uniform(sysmod.PAYMENT_DEADLINE + 1, sysmod.PAYMENT_DEADLINE + 4)
        if not self._free("payments"):
            return
        self._busy["payments"] = time.monotonic() + window + 8
        self._spawn(
            self._window("payments", latency, window, targets=("payments",), kind="latency")
        )

    async def _reset(self) -> None:
        service = self.rng.choice(sysmod.SERVICES)
        refuse = self.rng.uniform(0.3, 1.5) if self.rng.random() < 0.5 else 0.0
        proxy = self.system.service_proxies[service]
        ts = time.time()
        if refuse:
            proxy.refuse_for(refuse)
            self.events.append(
                FaultEvent(ts, "refuse", service, until=ts + refuse, detail=f"{refuse:.1f}s")
            )
        else:
            dropped = proxy.reset()
            self.events.append(FaultEvent(ts, "reset", service, detail=f"{dropped} conns"))

    # -- messages --

    async def _duplicate(self) -> None:
        count = self.rng.randint(1, 3)
        recent = self.rng.random() < 0.5  # a copy racing the original, or a late one
        poison = {p.message_id for p in self.injector.poison}
        candidates = [
            m
            for m in self.tap.messages
            if m.message_id
            and m.message_id not in self.injector.duplicated
            and m.message_id not in poison
            and m.message_type in ("OrderPaid", "ChargePayment")
        ]
        if not candidates:
            return
        pool = candidates[-5:] if recent else candidates
        for message in self.rng.sample(pool, min(count, len(pool))):
            with contextlib.suppress(Exception):
                await self.injector.duplicate(message)
