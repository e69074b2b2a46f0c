"""The fault run's verdict: a pure function from collected facts to a printable report.

`collect.py` gathers the facts (database, the simulated services' inspection and
request log, the dead-letter queues, the parts' JSON logs, what the test injected);
`check(facts)` decides, with no I/O, so it is unit-tested with hand-made facts
(`test_checker.py`).

The checks:

1. every accepted checkout exists once, for its order, and ended PAID or FAILED;
2. at most one successful charge per order, exactly one for a PAID order; a charge of
   an order that is not PAID (a late answer after its checkout failed) refunded once;
3. one invoice, one e-mail and one production order per PAID order, none for others;
4. the dead-letter queues hold exactly the injected poison (with failure headers),
   and each fixable message, once parked and replayed, was applied exactly once;
5. redeliveries and suppressed duplicates occurred (the faults bit);
6. no message was applied twice: a consumer's own "applied" record at most once per
   message id, and no repeated call to a service after it had answered, unless a
   failure, a fault or a concurrent duplicate explains the repeat. With a working
   inbox a late duplicate never reaches the service again; with the inbox off it does.
7. refunds: every refund returns one successful charge (and no charge is refunded
   twice); a CANCELLED order that was charged has exactly one refund; no REJECTED
   cancellation was refunded; every cancellation ended CANCELLED or REJECTED.

An order with a CANCELLED cancellation is expected CANCELLED whatever its checkouts
say; the forward checks (one charge, one of each effect) hold for PAID orders only.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

FINAL_STATES = ("PAID", "FAILED")
FINAL_CANCELLATIONS = ("CANCELLED", "REJECTED")

# Who calls which simulated service, and what the service's idempotency key is.
SERVICE_CALLER = {"payments": "saga", "emails": "email", "production": "production"}
KEY_IS_CHECKOUT = {"payments"}  # payments: key = checkout_id; the others: OrderPaid message_id
# Fault kinds that can make a part repeat a call it already made.
PART_FAULTS = {"kill", "broker-close", "broker-reset", "broker-latency"}
SERVICE_FAULTS = {"latency", "reset", "refuse"}
# How far before the first answer a fault may have happened and still explain a repeat
# (a kill or lost connection while the first call was on its way).
EXPLAIN_BEFORE = 5.0


@dataclass(frozen=True)
class ServiceCall:
    """One entry of a simulated service's inspection: one idempotency key."""

    service: str  # payments | emails | production
    key: str | None
    attempts: int
    order_id: str | None
    status_code: int | None  # the stored final answer, None if only failures so far
    succeeded: bool  # the effect happened (a charge taken, an e-mail sent, an order received)
    reference: str | None = None  # payments: the charge's payment_id; refunds: the one returned


@dataclass(frozen=True)
class MockRequest:
    """One request a simulated service logged (`mock_request`)."""

    service: str
    key: str | None
    outcome: str  # succeeded, declined, sent, received, replayed, outage, flaky_failure, ...
    status_code: int
    ts: float


@dataclass(frozen=True)
class Applied:
    """A consumer recorded that it applied a message: its log line after the commit, or
    the timeline row written in the effect's own transaction."""

    consumer: str  # saga | invoice | email | production
    message_id: str
    ts: float
    source: str = "log"  # log | db


def applied_counts(applied: list[Applied]) -> Counter[tuple[str, str]]:
    """How often each (consumer, message) was applied: the larger count of the two
    records, so a log line lost to SIGKILL or a part that keeps only one of them still
    counts once, and a second application shows in either."""
    by_source: dict[str, Counter[tuple[str, str]]] = defaultdict(Counter)
    for a in applied:
        by_source[a.source][(a.consumer, a.message_id)] += 1
    total: Counter[tuple[str, str]] = Counter()
    for counts in by_source.values():
        total |= counts  # element-wise max
    return total


@dataclass(frozen=True)
class LoggedFailure:
    """A part logged a failed attempt while handling a message."""

    part: str
    message_id: str | None
    checkout_id: str | None
    event: str
    ts: float


@dataclass(frozen=True)
class DeadLetter:
    dlq: str
    message_id: str | None
    failure_kind: str | None
    original_queue: str | None
    attempts: int | None
    error_type: str | None
    error_message: str | None = None


@dataclass(frozen=True)
class Poison:
    message_id: str
    kind: str
    route: str  # exchange/routing key it was published to
    expected_dlqs: tuple[str, ...]
    ts: float


@dataclass(frozen=True)
class Fixable:
    """A real message parked in a dead-letter queue by an outage, then replayed."""

    message_id: str
    order_id: str
    consumer: str  # invoice | email | production
    dlq: str
    parked: DeadLetter | None  # as seen in the dead-letter queue before the replay
    replayed: bool


@dataclass(frozen=True)
class FaultEvent:
    ts: float
    kind: str  # kill | broker-close | broker-reset | broker-latency | latency | reset | refuse
    target: str  # a part (relay, saga, invoice, ...) or a service proxy (payments, ...)
    until: float | None = None  # end of a window (restart time of a kill)
    detail: str = ""


@dataclass(frozen=True)
class Duplicate:
    """A copy of a real message the test published again with the same message_id."""

    message_id: str
    message_type: str
    correlation_id: str | None
    ts: float


@dataclass
class Facts:
    seed: int | None = None
    fault_seconds: float = 0.0
    accepted: dict[str, str] = field(default_factory=dict)  # checkout_id -> order_id (202s)
    orders: dict[str, str] = field(default_factory=dict)  # order_id -> status (database)
    checkouts: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (order, state)
    charges: list[ServiceCall] = field(default_factory=list)
    emails: list[ServiceCall] = field(default_factory=list)
    productions: list[ServiceCall] = field(default_factory=list)
    refunds: list[ServiceCall] = field(default_factory=list)  # key: the cancellation (or refund)
    cancellations: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (order, state)
    invoices: list[tuple[str, str]] = field(default_factory=list)  # (order_id, message_id)
    outbox: int = 0
    queues: dict[str, int] = field(default_factory=dict)  # messages left in consumed/wait queues
    dead_letters: list[DeadLetter] = field(default_factory=list)
    poison: list[Poison] = field(default_factory=list)
    fixable: list[Fixable] = field(default_factory=list)
    applied: list[Applied] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)  # part -> "duplicate message skipped"
    retries: int = 0  # "will retry": a message went to a wait queue
    failures: list[LoggedFailure] = field(default_factory=list)
    mock_requests: list[MockRequest] = field(default_factory=list)
    faults: list[FaultEvent] = field(default_factory=list)
    duplicates: list[Duplicate] = field(default_factory=list)
    settled: bool = True
    settle_seconds: float = 0.0
    stats: dict[str, int | float | str] = field(default_factory=dict)  # shown, not checked


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    summary: str
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class Report:
    seed: int | None
    checks: tuple[CheckResult, ...]
    numbers: dict[str, int | float | str]
    title: str = "FAULT RUN REPORT"

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def check(self, name: str) -> CheckResult:
        return next(c for c in self.checks if c.name == name)

    def failed(self) -> list[str]:
        return [c.name for c in self.checks if not c.ok]

    def text(self, max_problems: int = 8) -> str:
        width = max(len(c.name) for c in self.checks)
        lines = [
            "=" * 78,
            f"{self.title}   seed={self.seed}   verdict={'PASS' if self.ok else 'FAIL'}",
            "-" * 78,
        ]
        for c in self.checks:
            lines.append(f"{'PASS' if c.ok else 'FAIL'}  {c.name:<{width}}  {c.summary}")
            for problem in c.problems[:max_problems]:
                lines.append(f"      ! {problem}")
            if len(c.problems) > max_problems:
                lines.append(f"      ! ... and {len(c.problems) - max_problems} more")
        lines.append("-" * 78)
        items = [f"{k}={v}" for k, v in self.numbers.items()]
        row: list[str] = []
        for item in items:
            if sum(len(i) + 2 for i in row) + len(item) > 76:
                lines.append("  " + ", ".join(row))
                row = []
            row.append(item)
        if row:
            lines.append("  " + ", ".join(row))
        lines.append("=" * 78)
        return "\n".join(lines)


# ---- the checks ------------------------------------------------------------------


def _checkouts_final(f: Facts) -> CheckResult:
    problems = []
    states: Counter[str] = Counter()
    for checkout_id, order_id in sorted(f.accepted.items()):
        row = f.checkouts.get(checkout_id)
        if row is None:
            problems.append(f"accepted checkout {checkout_id} is not in the database")
            continue
        db_order, state = row
        states[state] += 1
        if db_order != order_id:
            problems.append(f"checkout {checkout_id} is for {db_order}, accepted for {order_id}")
        if state not in FINAL_STATES:
            problems.append(f"checkout {checkout_id} (order {order_id}) stuck in {state}")
    by_order: dict[str, list[str]] = defaultdict(list)
    for checkout_id, (order_id, state) in f.checkouts.items():
        by_order[order_id].append(state)
        if checkout_id not in f.accepted:
            problems.append(f"checkout {checkout_id} ({state}) was never accepted by the API")
    cancelled = _cancelled_orders(f)
    for order_id, order_states in sorted(by_order.items()):
        if order_states.count("PAID") > 1:
            problems.append(f"order {order_id} has {order_states.count('PAID')} PAID checkouts")
        status = f.orders.get(order_id)
        expected = (
            "CANCELLED"
            if order_id in cancelled
            else "PAID"
            if "PAID" in order_states
            else "FAILED"
            if all(s == "FAILED" for s in order_states)
            else "PENDING"
        )
        if status != expected:
            problems.append(f"order {order_id} is {status}, its checkouts say {expected}")
    if not f.settled:
        problems.append(f"the system did not settle within {f.settle_seconds:.0f}s")
    stuck = sum(n for s, n in states.items() if s not in FINAL_STATES)
    summary = (
        f"{len(f.accepted)} accepted: {states['PAID']} PAID, {states['FAILED']} FAILED, "
        f"{stuck} stuck; {len(by_order)} orders"
    )
    return CheckResult("checkouts final", not problems, summary, tuple(problems))


def _paid_orders(f: Facts) -> set[str]:
    return {o for o, status in f.orders.items() if status == "PAID"}


def _cancelled_orders(f: Facts) -> set[str]:
    """Orders with a cancellation that ended CANCELLED."""
    return {o for o, state in f.cancellations.values() if state == "CANCELLED"}


def _charges(f: Facts) -> CheckResult:
    paid = _paid_orders(f)
    taken: Counter[str] = Counter(c.order_id for c in f.charges if c.succeeded and c.order_id)
    problems = []
    cancelled = _cancelled_orders(f)
    # A charge that succeeded after its checkout had failed (its deadline reconciled it
    # as payment_timeout while the call was in flight) is refunded: nobody pays for it.
    refunded = Counter(r.reference for r in f.refunds if r.succeeded)
    late = {
        c.order_id
        for c in f.charges
        if c.succeeded and c.order_id and c.reference and refunded[c.reference] == 1
    }
    for order_id, n in sorted(taken.items()):
        if n > 1:
            problems.append(f"order {order_id} charged {n} times")
        if order_id not in paid and order_id not in cancelled and order_id not in late:
            problems.append(f"order {order_id} ({f.orders.get(order_id)}) was charged")
    problems += [f"PAID order {o} has no successful charge" for o in sorted(paid - set(taken))]
    attempts = sum(c.attempts for c in f.charges)
    summary = (
        f"{sum(taken.values())} charges for {len(paid)} PAID orders; "
        f"{len(f.charges)} keys, {attempts} requests"
    )
    return CheckResult("one charge per paid order", not problems, summary, tuple(problems))


def _effects(f: Facts) -> CheckResult:
    paid = _paid_orders(f)
    counts = {
        "invoice": Counter(order for order, _ in f.invoices),
        "email": Counter(c.order_id for c in f.emails if c.succeeded and c.order_id),
        "production": Counter(c.order_id for c in f.productions if c.succeeded and c.order_id),
    }
    problems = []
    # A cancelled order may have had its effects (then voided, or cancelled meanwhile).
    cancelled = _cancelled_orders(f)
    for effect, counter in counts.items():
        for order_id in sorted(paid):
            if counter[order_id] != 1:
                problems.append(f"PAID order {order_id} has {counter[order_id]} {effect}s")
        for order_id in sorted(set(counter) - paid - cancelled):
            problems.append(
                f"order {order_id} ({f.orders.get(order_id)}) has {counter[order_id]} {effect}s"
            )
    unattributed = sum(1 for c in f.emails + f.productions if c.succeeded and not c.order_id)
    if unattributed:
        problems.append(f"{unattributed} e-mails/production orders name no known order")
    summary = (
        f"{len(paid)} PAID: {sum(counts['invoice'].values())} invoices, "
        f"{sum(counts['email'].values())} e-mails, "
        f"{sum(counts['production'].values())} production orders"
    )
    return CheckResult("one of each effect per paid order", not problems, summary, tuple(problems))


def _dead_letters(f: Facts) -> CheckResult:
    expected = {(dlq, p.message_id) for p in f.poison for dlq in p.expected_dlqs}
    found = Counter((d.dlq, d.message_id) for d in f.dead_letters)
    problems = []
    for dlq, poison_id in sorted(expected - set(found), key=str):
        kind = next(p.kind for p in f.poison if p.message_id == poison_id)
        problems.append(f"poison {kind} {poison_id} missing from {dlq}")
    for dlq, found_id in sorted(set(found) - expected, key=str):
        letter = next(d for d in f.dead_letters if (d.dlq, d.message_id) == (dlq, found_id))
        problems.append(
            f"unexpected {dlq}: {found_id} ({letter.failure_kind}, {letter.error_type}"
            f" after {letter.attempts} attempts: {(letter.error_message or '')[:120]})"
        )
    for letter in f.dead_letters:
        if (letter.dlq, letter.message_id) not in expected:
            continue
        if letter.failure_kind != "permanent" or letter.original_queue != letter.dlq.removesuffix(
            ".dlq"
        ):
            problems.append(
                f"poison {letter.message_id} in {letter.dlq} lacks its failure headers "
                f"(kind={letter.failure_kind}, original queue={letter.original_queue})"
            )
    copies = sum(n - 1 for n in found.values() if n > 1)
    applied = applied_counts(f.applied)
    effects = {
        "email": Counter(c.key for c in f.emails if c.succeeded),
        "production": Counter(c.key for c in f.productions if c.succeeded),
    }
    for fix in f.fixable:
        if fix.parked is None or fix.parked.failure_kind != "transient":
            problems.append(f"fixable {fix.message_id} was not parked in {fix.dlq} as transient")
        if not fix.replayed:
            problems.append(f"fixable {fix.message_id} was not replayed")
        times = applied[(fix.consumer, fix.message_id)]
        if times != 1:
            problems.append(f"replayed {fix.message_id} applied {times} times by {fix.consumer}")
        made = effects.get(fix.consumer)
        if made is not None and made[fix.message_id] != 1:
            problems.append(
                f"replayed {fix.message_id}: {made[fix.message_id]} {fix.consumer} effects"
            )
    summary = (
        f"{len(f.poison)} poison -> {len(expected)} expected, {sum(found.values())} found"
        f"{f' ({copies} extra copies of one id)' if copies else ''}; "
        f"{sum(1 for x in f.fixable if x.replayed)}/{len(f.fixable)} fixable replayed"
    )
    return CheckResult("dead letters = poison; replay once", not problems, summary, tuple(problems))


def _faults_bit(f: Facts) -> CheckResult:
    replayed_calls = sum(1 for r in f.mock_requests if r.outcome == "replayed")
    redeliveries = f.retries + replayed_calls
    suppressed = sum(f.skipped.values())
    problems = []
    if redeliveries == 0:
        problems.append("no message was retried and no service call repeated")
    if suppressed == 0:
        problems.append("no duplicate was suppressed by an inbox")
    skipped = ", ".join(f"{p} {n}" for p, n in sorted(f.skipped.items()) if n)
    summary = (
        f"{f.retries} retries, {replayed_calls} repeated service calls; "
        f"{suppressed} duplicates suppressed ({skipped or 'none'})"
    )
    return CheckResult("faults bit", not problems, summary, tuple(problems))


def unexplained_repeats(f: Facts) -> list[tuple[MockRequest, str]]:
    """Repeated service calls (after the key had its final answer) nothing explains."""
    first_final: dict[tuple[str, str], float] = {}
    for r in sorted(f.mock_requests, key=lambda r: r.ts):
        if r.key and r.status_code < 500 and r.outcome != "replayed":
            first_final.setdefault((r.service, r.key), r.ts)
    first_applied: dict[tuple[str, str], float] = {}
    for a in sorted(f.applied, key=lambda a: a.ts):
        first_applied.setdefault((a.consumer, a.message_id), a.ts)
    found = []
    for r in f.mock_requests:
        if r.outcome != "replayed" or not r.key or r.service not in SERVICE_CALLER:
            continue
        caller = SERVICE_CALLER[r.service]
        start = first_final.get((r.service, r.key), r.ts) - EXPLAIN_BEFORE
        end = r.ts + 1.0

        def overlaps(event: FaultEvent, start: float = start, end: float = end) -> bool:
            return event.ts <= end and (event.until or event.ts) >= start

        if r.service in KEY_IS_CHECKOUT:
            logged = any(
                x.part == caller and x.checkout_id == r.key and start <= x.ts <= end
                for x in f.failures
            )
            duplicated = any(
                d.message_type == "ChargePayment" and d.correlation_id == r.key and d.ts <= end
                for d in f.duplicates
            )
        else:
            logged = any(
                x.part == caller and x.message_id == r.key and start <= x.ts <= end
                for x in f.failures
            )
            applied_at = first_applied.get((caller, r.key), float("inf"))
            # A copy published after the first one was applied must be dropped by the
            # inbox before the call; only a concurrent copy may reach the service.
            duplicated = any(d.message_id == r.key and d.ts <= applied_at for d in f.duplicates)
        faulted = any(
            (e.kind in PART_FAULTS and e.target in (caller, "relay"))
            or (e.kind in SERVICE_FAULTS and e.target == r.service)
            for e in f.faults
            if overlaps(e)
        )
        if not (logged or duplicated or faulted):
            found.append((r, caller))
    return found


def _applied_once(f: Facts) -> CheckResult:
    problems = []
    times = applied_counts(f.applied)
    twice = {k: n for k, n in times.items() if n > 1}
    for (consumer, message_id), n in sorted(twice.items()):
        problems.append(f"duplicate applied: {consumer} applied {message_id} {n} times")
    repeats = unexplained_repeats(f)
    for r, caller in sorted(repeats, key=lambda x: x[0].ts):
        problems.append(
            f"duplicate applied: {caller} called {r.service} again for {r.key} "
            "after it had answered, with no failure, fault or concurrent copy to explain it"
        )
    summary = (
        f"{len(times)} messages applied, {len(twice)} more than once; "
        f"{len(repeats)} unexplained repeat calls"
    )
    return CheckResult("no duplicate applied", not problems, summary, tuple(problems))


def _refunds(f: Facts) -> CheckResult:
    charged: dict[str, str | None] = {
        c.reference: c.order_id for c in f.charges if c.succeeded and c.reference
    }
    refunded: Counter[str | None] = Counter(r.reference for r in f.refunds if r.succeeded)
    problems = []
    for reference, n in sorted(refunded.items(), key=str):
        if reference not in charged:
            problems.append(f"refund of {reference}, which was never successfully charged")
        elif n > 1:
            problems.append(f"charge {reference} (order {charged[reference]}) refunded {n} times")
    for order_id in sorted(_cancelled_orders(f)):
        charges = [ref for ref, order in charged.items() if order == order_id]
        for reference in charges:
            if refunded[reference] != 1:
                problems.append(
                    f"CANCELLED order {order_id}: charge {reference} refunded "
                    f"{refunded[reference]} times"
                )
    rejected = {c for c, (_, state) in f.cancellations.items() if state == "REJECTED"}
    for refund in f.refunds:
        if refund.succeeded and refund.key in rejected:
            problems.append(f"REJECTED cancellation {refund.key} was refunded")
    open_ = sorted(c for c, (_, s) in f.cancellations.items() if s not in FINAL_CANCELLATIONS)
    problems += [f"cancellation {c} stuck in {f.cancellations[c][1]}" for c in open_]
    states = Counter(state for _, state in f.cancellations.values())
    summary = (
        f"{len(f.cancellations)} cancellations: {states['CANCELLED']} CANCELLED, "
        f"{states['REJECTED']} REJECTED, {len(open_)} open; "
        f"{sum(refunded.values())} refunds of {len(charged)} charges"
    )
    return CheckResult("refunds match charges", not problems, summary, tuple(problems))


def check(f: Facts, title: str = "FAULT RUN REPORT") -> Report:
    checks = (
        _checkouts_final(f),
        _charges(f),
        _effects(f),
        _dead_letters(f),
        _faults_bit(f),
        _applied_once(f),
        _refunds(f),
    )
    # One fault may touch several parts (a reset of the broker proxy): count it once.
    kinds = Counter(kind for kind, _ in {(e.kind, e.ts) for e in f.faults})
    numbers: dict[str, int | float | str] = {
        "fault_seconds": round(f.fault_seconds, 1),
        "settled_in_s": round(f.settle_seconds, 1),
        "kills": kinds["kill"],
        "broker_closes": kinds["broker-close"],
        "broker_resets": kinds["broker-reset"],
        "broker_latency": kinds["broker-latency"],
        "svc_latency_windows": kinds["latency"],
        "svc_resets": kinds["reset"],
        "svc_refusals": kinds["refuse"],
        "duplicates_injected": len(f.duplicates),
        "poison_injected": len(f.poison),
        "fixable_replayed": sum(1 for x in f.fixable if x.replayed),
        "retries": f.retries,
        "suppressed": sum(f.skipped.values()),
        "outbox_left": f.outbox,
        "queued_left": sum(f.queues.values()),
        **f.stats,
    }
    return Report(f.seed, checks, numbers, title)
