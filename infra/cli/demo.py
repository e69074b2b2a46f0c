"""`checkout demo`: create sample orders, check them out, and watch them finish.

It talks only HTTP to the API, like any client would. The samples are chosen to show
the interesting paths: the simulated payment service declines an amount ending in .01
and answers 503 twice to one ending in .02 (retried, then paid). Two paid orders are
then cancelled: one is refunded and ends CANCELLED; the other (.06) is already in
production, so its cancellation is REJECTED and it stays paid. (For that one the demo
first waits, through the simulated Production Service's inspection list, until the
order has reached production: cancelled before, it would simply never be made.)

`run_demo` takes an `httpx.AsyncClient` and a callback, so tests can hand it a client
on a fake transport; `main` wires the real client, the live table and the JSON output.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from rich.live import Live
from rich.table import Table
from rich.text import Text

from infra.auth.devkey import read_key_file
from infra.cli.output import console, err_console, is_terminal, print_json
from infra.cli.supervisor import local_url
from infra.settings import Settings

FINAL = ("PAID", "FAILED")
CANCELLATION_FINAL = ("CANCELLED", "REJECTED")
POLL_INTERVAL = 0.2
CUSTOMER = {"email": "ada.lovelace@example.com", "name": "Ada Lovelace"}


class DemoError(Exception):
    """The demo cannot go on; the message is one line saying why and what to do."""


@dataclass(frozen=True)
class Sample:
    """An order the demo creates, and the final checkout state it should reach."""

    order_name: str
    amount: str
    expect: str
    cancel: str | None = None  # the final state its cancellation should reach, if cancelled


def samples(tag: str) -> list[Sample]:
    """The demo's orders; `tag` tells this run's orders from earlier runs' in GET /orders."""
    return [
        Sample(f"demo {tag} espresso machine", "49.00", "PAID"),
        Sample(f"demo {tag} declined card .01", "25.01", "FAILED"),
        Sample(f"demo {tag} flaky payment .02", "30.02", "PAID"),
        Sample(f"demo {tag} coffee beans", "12.50", "PAID"),
        Sample(f"demo {tag} cancelled and refunded", "35.00", "PAID", cancel="CANCELLED"),
        Sample(f"demo {tag} already in production .06", "40.06", "PAID", cancel="REJECTED"),
    ]


@dataclass
class Tracked:
    """One sample order as last seen through the API."""

    sample: Sample
    order_id: str | None = None
    checkout_id: str | None = None
    state: str | None = None
    order_status: str | None = None
    steps: list[dict[str, Any]] = field(default_factory=list)
    started: float | None = None
    finished: float | None = None
    cancellation_id: str | None = None
    cancellation_state: str | None = None
    refund: dict[str, Any] | None = None
    rejection_reason: str | None = None

    @property
    def checkout_done(self) -> bool:
        return self.state in FINAL

    @property
    def done(self) -> bool:
        if not self.checkout_done:
            return False
        if self.sample.cancel is None or self.state != "PAID":
            return True
        return self.cancellation_state in CANCELLATION_FINAL

    @property
    def as_expected(self) -> bool:
        return self.state == self.sample.expect and self.cancellation_state == self.sample.cancel

    def cancellation(self) -> str:
        """The cancellation column: its state, and its refund or why it was rejected."""
        if self.cancellation_state is None:
            return ""
        if self.refund is not None:
            refund = self.refund
            return f"{self.cancellation_state} (refund {refund['status']} {refund['amount']})"
        if self.rejection_reason:
            return f"{self.cancellation_state} ({self.rejection_reason})"
        return self.cancellation_state

    def elapsed(self, now: float) -> float | None:
        if self.started is None:
            return None
        return (self.finished or now) - self.started

    def last_step(self) -> str:
        if not self.steps:
            return ""
        step = self.steps[-1]
        text = f"{step.get('name', '?')} {step.get('status', '')}".strip()
        return f"{text} ({step['detail']})" if step.get("detail") else text

    def as_json(self) -> dict[str, Any]:
        return {
            "order_id": self.order_id,
            "order_name": self.sample.order_name,
            "amount": self.sample.amount,
            "checkout_id": self.checkout_id,
            "state": self.state,
            "order_status": self.order_status,
            "steps": self.steps,
            "cancellation_id": self.cancellation_id,
            "cancellation_state": self.cancellation_state,
            "refund": self.refund,
        }


def not_answering(api_url: str) -> str:
    return (
        f"The API at {api_url} is not answering: start the system with `make run` "
        "(or .venv/bin/checkout up) in another terminal"
    )


@dataclass(frozen=True)
class Credentials:
    """The API key the demo sends, and how a person would send the same one with curl."""

    token: str | None
    shell: str  # what to put after `Bearer ` in a shell command
    source: str  # where the key came from, for error messages


def credentials(settings: Settings) -> Credentials:
    """CHECKOUT_API_KEY if set, else the development key `checkout up` wrote."""
    if settings.api_key is not None:
        return Credentials(
            settings.api_key.get_secret_value(), "$CHECKOUT_API_KEY", "CHECKOUT_API_KEY"
        )
    path = settings.dev_key_file
    return Credentials(read_key_file(path), f"$(cat {path})", str(path))


def no_key(creds: Credentials) -> str:
    return (
        f"No API key: {creds.source} does not exist. Start the system with `make run` once "
        "(it creates that development key), or set CHECKOUT_API_KEY to a key from "
        "`checkout apikey create --name demo --role clerk`"
    )


def _problem(response: httpx.Response) -> str:
    """A problem+json response as `status title: detail`, or its first 200 characters."""
    try:
        body = response.json()
    except ValueError:
        return f"{response.status_code} {response.text[:200]}"
    if isinstance(body, dict):
        title = body.get("title") or response.reason_phrase
        detail = body.get("detail")
        return f"{response.status_code} {title}" + (f": {detail}" if detail else "")
    return f"{response.status_code} {body!r:.200}"


async def check_ready(client: httpx.AsyncClient) -> None:
    """DemoError unless GET /health/ready answers 200."""
    api_url = str(client.base_url).rstrip("/")
    try:
        response = await client.get("/health/ready")
    except httpx.TransportError:
        raise DemoError(not_answering(api_url)) from None
    if response.status_code != 200:
        raise DemoError(
            f"The API at {api_url} answers but is not ready ({_problem(response)}): "
            "check that PostgreSQL and RabbitMQ run, and the `checkout up` terminal"
        )


async def _send(client: httpx.AsyncClient, method: str, url: str, **kwargs: Any) -> Any:
    try:
        response = await client.request(method, url, **kwargs)
    except httpx.TransportError as exc:
        raise DemoError(f"{method} {url} failed: {exc!r}") from None
    if response.status_code == 401:
        raise DemoError(
            f"The API refused the key ({_problem(response)}): it is not a live key of this "
            "system. Restart `make run` (it makes a new development key if needed) or set "
            "CHECKOUT_API_KEY to a key from `checkout apikey create --name demo --role clerk`"
        )
    if response.is_error:
        raise DemoError(f"{method} {url} answered {_problem(response)}")
    return response.json()


async def start(client: httpx.AsyncClient, tracked: Tracked, clock: Callable[[], float]) -> None:
    """Create the order and start its checkout."""
    sample = tracked.sample
    order = await _send(
        client,
        "POST",
        "/orders",
        json={"order_name": sample.order_name, "amount": sample.amount, "customer": CUSTOMER},
    )
    tracked.order_id = order["order_id"]
    tracked.order_status = order["status"]
    tracked.started = clock()
    checkout = await _send(
        client,
        "POST",
        f"/orders/{tracked.order_id}/checkout",
        headers={"Idempotency-Key": str(uuid.uuid4())},
    )
    _apply_checkout(tracked, checkout, clock)


def _apply_checkout(tracked: Tracked, checkout: dict[str, Any], clock: Callable[[], float]) -> None:
    tracked.checkout_id = checkout["checkout_id"]
    tracked.state = checkout["state"]
    tracked.steps = list(checkout.get("steps") or [])
    if tracked.done and tracked.finished is None:
        tracked.finished = clock()


async def refresh(client: httpx.AsyncClient, tracked: Tracked, clock: Callable[[], float]) -> None:
    """Read the checkout, then the order; a passing API hiccup keeps the last view."""
    try:
        # Checkout first: the saga commits the final state and the order status in one
        # transaction, so an order read after a final checkout is already final too.
        checkout = await _send(client, "GET", f"/checkouts/{tracked.checkout_id}")
        order = await _send(client, "GET", f"/orders/{tracked.order_id}")
    except DemoError:
        return
    _apply_checkout(tracked, checkout, clock)
    tracked.order_status = order["status"]


async def in_production(client: httpx.AsyncClient, mocks_url: str, order_id: str) -> bool:
    """Whether the simulated Production Service has received the order."""
    try:
        entries = await _send(client, "GET", f"{mocks_url}/mock/production/orders")
    except DemoError:
        return False
    return any(order_id in str(entry.get("request")) for entry in entries)


async def advance_cancellation(client: httpx.AsyncClient, tracked: Tracked, mocks_url: str) -> None:
    """Cancel a paid sample meant to be cancelled (once it may be), or read its cancellation."""
    if tracked.cancellation_id is None:
        if tracked.sample.cancel == "REJECTED" and not await in_production(
            client, mocks_url, str(tracked.order_id)
        ):
            return  # not in production yet: cancelled now, it would be refunded instead
        cancellation = await _send(
            client,
            "POST",
            f"/orders/{tracked.order_id}/cancel",
            json={"reason": "demo: the customer changed their mind"},
            headers={"Idempotency-Key": str(uuid.uuid4())},
        )
    else:
        try:
            cancellation = await _send(client, "GET", f"/cancellations/{tracked.cancellation_id}")
            order = await _send(client, "GET", f"/orders/{tracked.order_id}")
        except DemoError:
            return
        tracked.order_status = order["status"]
    tracked.cancellation_id = cancellation["cancellation_id"]
    tracked.cancellation_state = cancellation["state"]
    tracked.refund = cancellation.get("refund")
    tracked.rejection_reason = cancellation.get("rejection_reason")
    if cancellation.get("steps"):
        tracked.steps = tracked.steps + [
            step for step in cancellation["steps"] if step not in tracked.steps
        ]


async def run_demo(
    client: httpx.AsyncClient,
    orders: Sequence[Sample],
    *,
    on_update: Callable[[list[Tracked]], None] = lambda _: None,
    patience: float = 60.0,
    interval: float = POLL_INTERVAL,
    clock: Callable[[], float] = time.monotonic,
    no_key_error: str | None = None,
    mocks_url: str = "",
) -> list[Tracked]:
    """Check the API is ready, start every sample, poll until all are final or out of patience.

    `client` sends the API key (`credentials`); `no_key_error`, if given, is raised once
    the API answers, for a demo that has no key to send.
    """
    await check_ready(client)
    if no_key_error is not None:
        raise DemoError(no_key_error)
    tracked = [Tracked(sample) for sample in orders]
    on_update(tracked)
    for item in tracked:
        await start(client, item, clock)
        on_update(tracked)
    deadline = clock() + patience
    while not all(item.done for item in tracked) and clock() < deadline:
        await asyncio.sleep(interval)
        await asyncio.gather(
            *(refresh(client, item, clock) for item in tracked if not item.checkout_done)
        )
        await asyncio.gather(
            *(
                advance_cancellation(client, item, mocks_url)
                for item in tracked
                if item.checkout_done and not item.done
            )
        )
        on_update(tracked)
    return tracked


# --------------------------------------------------------------------------- presentation

_COLOURS = {"PAID": "green", "FAILED": "red", "CANCELLED": "magenta", "REJECTED": "red"}


def _status(value: str | None) -> Text:
    if value is None:
        return Text("—", style="dim")
    return Text(value, style=_COLOURS.get(value, "yellow"))


def render(tracked: Sequence[Tracked], now: float) -> Table:
    """The live table: one row per order, coloured by state."""
    table = Table(title="checkout demo", title_justify="left", expand=False)
    table.add_column("order")
    table.add_column("amount", justify="right", no_wrap=True)
    table.add_column("checkout", no_wrap=True)
    table.add_column("order status", no_wrap=True)
    table.add_column("cancellation")
    table.add_column("last step")
    table.add_column("elapsed", justify="right", no_wrap=True)
    for item in tracked:
        elapsed = item.elapsed(now)
        table.add_row(
            item.sample.order_name,
            item.sample.amount,
            _status(item.state),
            _status(item.order_status),
            Text(item.cancellation(), style=_COLOURS.get(item.cancellation_state or "", "yellow")),
            item.last_step(),
            f"{elapsed:.1f}s" if elapsed is not None else "",
        )
    return table


def _where_next(
    tracked: Sequence[Tracked], api: str, mocks: str, creds: Credentials
) -> list[tuple[str, str]]:
    one = next((t for t in tracked if t.order_id), None)
    curl = f'curl -H "Authorization: Bearer {creds.shell}"'
    key = creds.shell if creds.source == "CHECKOUT_API_KEY" else f"`cat {creds.source}`"
    rows = [
        ("the console", f"{api}/console (sign in with an operator key: {key})"),
        ("API docs", f"{api}/docs"),
    ]
    if one is not None:
        rows.append(("one order", f"{curl} {api}/orders/{one.order_id}"))
        rows.append(("its checkout", f"{curl} {api}/checkouts/{one.checkout_id}"))
        rows.append(("its timeline", f"{curl} {api}/checkouts/{one.checkout_id}/timeline"))
    cancelled = next((t for t in tracked if t.cancellation_id), None)
    if cancelled is not None:
        rows.append(("a cancellation", f"{curl} {api}/cancellations/{cancelled.cancellation_id}"))
        rows.append(("its trace", f".venv/bin/checkout trace {cancelled.order_id}"))
    rows += [
        ("all demo orders", f"{curl} '{api}/orders?name=demo'"),
        ("payments seen", f"curl {mocks}/mock/payments"),
        ("refunds made", f"curl {mocks}/mock/refunds"),
        ("emails sent", f"curl {mocks}/mock/emails"),
        ("production orders", f"curl {mocks}/mock/production/orders"),
        ("dead letters", ".venv/bin/checkout dlq list"),
    ]
    return rows


def _report_unexpected(tracked: Sequence[Tracked], timeout: float) -> None:
    err = err_console()
    for item in tracked:
        if item.checkout_done and not item.done:
            err.print(
                f"[yellow]cancellation still {item.cancellation_state or 'not started'} after "
                f"{timeout:g}s:[/] {item.sample.order_name} (order {item.order_id}); look at "
                f"`.venv/bin/checkout trace {item.order_id}` and `.venv/bin/checkout dlq list`",
                markup=True,
                soft_wrap=True,
            )
        elif not item.done:
            err.print(
                f"[yellow]still {item.state or 'not started'} after {timeout:g}s:[/] "
                f"{item.sample.order_name} (checkout {item.checkout_id}, "
                f"last step: {item.last_step() or 'none'}); look at the saga, relay and mocks "
                "lines in the `checkout up` terminal, and at `.venv/bin/checkout dlq list`",
                markup=True,
                soft_wrap=True,
            )
        elif not item.as_expected:
            ended = f"{item.state}" + (
                f", cancellation {item.cancellation_state}" if item.sample.cancel else ""
            )
            expected = item.sample.expect + (
                f", cancellation {item.sample.cancel}" if item.sample.cancel else ""
            )
            err.print(
                f"[red]{item.sample.order_name} ended {ended}, expected {expected}[/]: "
                f"{item.last_step()}",
                soft_wrap=True,
            )


async def _demo(
    settings: Settings,
    patience: float,
    live: bool,
    transport: httpx.AsyncBaseTransport | None,
) -> list[Tracked]:
    api = local_url(settings.api_host, settings.api_port)
    mocks = local_url(settings.mocks_host, settings.mocks_port)
    tag = uuid.uuid4().hex[:4]
    creds = credentials(settings)
    headers = {"Authorization": f"Bearer {creds.token}"} if creds.token else {}
    missing = None if creds.token else no_key(creds)
    # trust_env off: a proxy from the environment must not sit between us and localhost.
    async with httpx.AsyncClient(
        base_url=api, timeout=5.0, trust_env=False, transport=transport, headers=headers
    ) as client:
        if not live:
            return await run_demo(
                client, samples(tag), patience=patience, no_key_error=missing, mocks_url=mocks
            )
        out = console()
        with Live(console=out, refresh_per_second=10) as view:

            def show(tracked: list[Tracked]) -> None:
                view.update(render(tracked, time.monotonic()))

            return await run_demo(
                client,
                samples(tag),
                on_update=show,
                patience=patience,
                no_key_error=missing,
                mocks_url=mocks,
            )


def main(
    settings: Settings,
    timeout: float = 60.0,
    transport: httpx.AsyncBaseTransport | None = None,
) -> int:
    """Run the demo; 0 when every checkout ended as expected, else 1.

    Args:
        transport: what the HTTP client sends through; tests pass a fake API here.
    """
    live = is_terminal()
    try:
        tracked = asyncio.run(_demo(settings, timeout, live, transport))
    except DemoError as exc:
        sys.stderr.write(f"{exc}\n")
        return 1
    ok = all(item.done and item.as_expected for item in tracked)
    if live:
        api = local_url(settings.api_host, settings.api_port)
        mocks = local_url(settings.mocks_host, settings.mocks_port)
        out = console()
        if ok:
            out.print(
                "\n[green]Every checkout ended as expected[/] (the .01 one is declined on "
                "purpose), and so did both cancellations (the .06 order was already in "
                "production: its cancellation is rejected and it stays paid)."
            )
        else:
            out.print("\n[red]Not every checkout ended as expected[/] (details below).")
        out.print("\nWhere to look next:")
        for label, value in _where_next(tracked, api, mocks, credentials(settings)):
            out.print(f"  [bold]{label:<18}[/] {value}", soft_wrap=True)
    else:
        print_json([item.as_json() for item in tracked])
    if not ok:
        _report_unexpected(tracked, timeout)
    return 0 if ok else 1
