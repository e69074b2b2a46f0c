"""The operators' console in Debian's Chromium, against `checkout up` as a process.

Every browser test runs with every request to another host aborted (and recorded:
there must be none) and fails on any error in the browser's console (a script
error, a refused Content-Security-Policy, a failed load); on failure it leaves a
screenshot in its temporary folder. Set CHECKOUT_SCREENSHOTS=DIR to also keep the
screenshots the README shows (the overview and an order's timeline).

Also here, as they need the same running system: the banner of `checkout up` says
where each part's health and metrics are, and each part exports only its own metrics.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import httpx
import pytest
from playwright.async_api import Browser, BrowserContext, Page, Request, Route, async_playwright

from infra.auth.keys import Role, create_key
from infra.db.session import create_engine
from infra.messaging.topology import Topology
from tests.support.amqp import depth
from tests.support.polling import eventually
from tests.support.system import System, outage

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = os.environ.get("CHECKOUT_SCREENSHOTS")


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    if not CHROMIUM.exists():
        pytest.skip(
            f"{CHROMIUM} is missing and the browser tests need it: apt-get install -y chromium "
            "(.ci/run installs it)"
        )
    async with async_playwright() as playwright:
        # Playwright cannot download its own browsers here; Debian's Chromium does.
        launched = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"]
        )
        yield launched
        await launched.close()


class Watched:
    """A browser context that may reach only the API, and remembers what it tried."""

    def __init__(self, context: BrowserContext, page: Page, api: str) -> None:
        self.context = context
        self.page = page
        self.api = urlsplit(api).netloc
        self.elsewhere: list[str] = []
        self.errors: list[str] = []
        self.expected: list[str] = []  # errors a test provokes on purpose (a refused form)

    def unexpected_errors(self) -> list[str]:
        return [e for e in self.errors if not any(x in e for x in self.expected)]

    async def _route(self, route: Route, request: Request) -> None:
        parts = urlsplit(request.url)
        if parts.scheme in ("data", "blob") or parts.netloc == self.api:
            await route.continue_()
        else:
            self.elsewhere.append(request.url)
            await route.abort()

    async def sign_in(self, system: System, token: str | None = None) -> None:
        key = token or system.auth["Authorization"].removeprefix("Bearer ")
        await self.page.goto(f"{system.api}/console")
        await self.page.wait_for_url("**/console/sign-in")
        await self.page.fill("#api_key", key)
        await self.page.click("button[type=submit]")
        await self.page.wait_for_url("**/console/")


@asynccontextmanager
async def watched(browser: Browser, system: System, tmp_path: Path) -> AsyncIterator[Watched]:
    context = await browser.new_context(viewport={"width": 1360, "height": 900})
    page = await context.new_page()
    watch = Watched(context, page, system.api)
    await context.route("**/*", watch._route)
    page.on(
        "console",
        lambda message: watch.errors.append(message.text) if message.type == "error" else None,
    )
    page.on("pageerror", lambda error: watch.errors.append(str(error)))
    try:
        yield watch
        assert watch.elsewhere == [], "requests to another host"
        assert watch.unexpected_errors() == [], "errors in the browser console"
    except BaseException:
        await page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
        raise
    finally:
        await context.close()


async def keep_screenshot(page: Page, name: str) -> None:
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(Path(SCREENSHOTS) / name), full_page=False)


async def paid_order(
    system: System,
    *,
    name: str,
    email: str = "ada@example.com",
    amount: str = "24.50",
    outcome: str = "PAID",
) -> str:
    async with httpx.AsyncClient(headers=system.auth) as client:
        order = (
            await client.post(
                f"{system.api}/orders",
                json={
                    "order_name": name,
                    "amount": amount,
                    "customer": {"email": email, "name": "Ada"},
                },
            )
        ).json()
        order_id = str(order["order_id"])
        await client.post(f"{system.api}/orders/{order_id}/checkout")

        async def status() -> str:
            return str((await client.get(f"{system.api}/orders/{order_id}")).json()["status"])

        await eventually(status, until=lambda s: s == outcome, timeout=30, what=f"order {outcome}")
    return order_id


async def dead_letters(system: System, key: str) -> int:
    connection = await aio_pika.connect(system.settings.rabbit_url.get_secret_value())
    async with connection:
        channel = await connection.channel()
        return await depth(channel, Topology.from_settings(system.settings).queues[key].dlq)


async def test_docs_and_redoc_render_with_no_network(
    browser: Browser, system: System, tmp_path: Path
) -> None:
    async with watched(browser, system, tmp_path) as w:
        await w.page.goto(f"{system.api}/docs")
        await w.page.locator(
            ".opblock-summary-path", has_text="/orders/{order_id}/checkout"
        ).first.wait_for()
        await w.page.goto(f"{system.api}/redoc")
        await w.page.locator("h1", has_text="Checkout API").first.wait_for()
        await w.page.get_by_text("/checkouts/{checkout_id}/timeline").first.wait_for(
            state="attached"
        )


async def test_sign_in_and_see_the_overview(
    browser: Browser, system: System, tmp_path: Path
) -> None:
    await paid_order(system, name="Overview poster")
    async with watched(browser, system, tmp_path) as w:
        await w.sign_in(system)
        page = w.page
        assert await page.inner_text("#signed-in-as") == "development"
        assert await page.inner_text("h1") == "Overview"
        checkouts = await page.inner_text("#checkouts")
        assert "PAID" in checkouts
        queues = await page.inner_text("#queues")
        namespace = system.settings.namespace
        # Every consumed queue of the topology (the lean flow has no saga queue).
        for key in Topology.from_settings(system.settings).queues:
            assert f"{namespace}.{key}.dlq" in queues
        assert await page.locator('meta[http-equiv="refresh"]').count() == 1


async def test_find_an_order_and_open_its_timeline(
    browser: Browser, system: System, tmp_path: Path
) -> None:
    name = f"Timeline poster {uuid.uuid4().hex[:6]}"
    order_id = await paid_order(system, name=name)
    async with watched(browser, system, tmp_path) as w:
        await w.sign_in(system)
        page = w.page
        await page.click("nav >> text=Orders")
        await page.fill("#q", name.split()[-1])
        await page.click("form.inline button")
        await page.click(f"#orders a[href$='{order_id}']")
        await page.wait_for_url(f"**/console/orders/{order_id}")
        assert await page.inner_text("#order-status") == "PAID"
        hops = page.locator(".timeline .hop")
        assert await hops.count() >= 5
        timeline = await page.inner_text(".timeline")
        for source in ("api", "relay", "saga", "invoice", "email", "production"):
            assert source in timeline
        assert await page.locator(".hop-transition").count() >= 1
        assert await page.locator(".timeline svg rect").count() == await hops.count()
        await keep_screenshot(page, "console-timeline.png")


async def test_a_dead_letter_is_shown_and_replayed_once_with_a_reason(
    browser: Browser, system: System, tmp_path: Path
) -> None:
    async with (
        httpx.AsyncClient(headers=system.auth) as client,
        outage(client, "production", mocks=system.mocks),
    ):
        order_id = await paid_order(system, name="Replayed poster")
        # A declined card too: the overview of the README's screenshot shows a FAILED one.
        await paid_order(system, name="Declined poster", amount="30.01", outcome="FAILED")
        await eventually(
            lambda: dead_letters(system, "production"),
            until=lambda n: n >= 1,
            timeout=60,
            what="the production message dead-lettered",
        )
    dlq = Topology.from_settings(system.settings).queues["production"]
    async with watched(browser, system, tmp_path) as w:
        await w.sign_in(system)
        page = w.page
        assert await page.inner_text(f"#queues tr:has-text('{dlq.dlq}') td:last-child") == "1"
        await keep_screenshot(page, "console-overview.png")
        await page.click("nav >> text=Dead letters")
        await page.click(f"text={dlq.dlq}")
        letter = page.locator("tbody.letter", has_text=order_id)
        await letter.locator("summary").click()
        body = json.loads(await letter.locator("pre.body").inner_text())
        assert body["order_id"] == order_id
        assert "x-original-queue" in await letter.locator("pre.headers").inner_text()
        assert "OrderPaid" in await letter.inner_text()
        await keep_screenshot(page, "console-dead-letters.png")
        await letter.locator("input[name=message_id]").check()
        await page.fill("#reason", "production is back")
        await page.click("button >> text=Dry run")
        assert "would replay 1 message" in await page.inner_text("#outcome")
        await page.go_back()
        await page.wait_for_selector("tbody.letter")
        letter = page.locator("tbody.letter", has_text=order_id)
        await letter.locator("input[name=message_id]").check()
        await page.fill("#reason", "production is back")
        await page.click("button.primary >> text=Replay")
        assert "Replayed 1 message" in await page.inner_text("#outcome")

        async with httpx.AsyncClient() as client:

            async def delivered() -> list[dict[str, Any]]:
                found = (
                    await client.get(f"{system.mocks}/mock/production/orders?include=status_code")
                ).json()
                return [e for e in found if e["request"].get("order_id") == order_id]

            entries = await eventually(
                delivered,
                until=lambda e: any(x["status_code"] == 201 for x in e),
                timeout=30,
                what="the production order delivered",
            )
        assert len(entries) == 1  # one idempotency key: applied once

        await page.goto(f"{system.api}/console/orders/{order_id}")
        replayed = page.locator(".hop-replay")
        assert await replayed.count() >= 1
        assert "production is back" in await replayed.first.inner_text()
        assert await page.locator(".hop-retry").count() >= 1
        assert await page.locator(".hop-dead").count() >= 1
        await page.click("nav >> text=Audit log")
        newest = await page.inner_text("#audit tbody tr:first-child")
        assert "development" in newest
        assert "replay" in newest
        assert "production is back" in newest


async def test_a_checkout_stuck_in_a_payment_outage_is_repaired_from_the_stuck_page(
    browser: Browser, system: System, tmp_path: Path
) -> None:
    async with httpx.AsyncClient(headers=system.auth) as client:
        async with outage(client, "payments", mocks=system.mocks):
            order = (
                await client.post(
                    f"{system.api}/orders",
                    json={
                        "order_name": "Stuck poster",
                        "amount": "41.00",
                        "customer": {"email": "ada@example.com", "name": "Ada"},
                    },
                )
            ).json()
            order_id = str(order["order_id"])
            checkout = (await client.post(f"{system.api}/orders/{order_id}/checkout")).json()
            checkout_id = str(checkout["checkout_id"])
            await eventually(
                lambda: dead_letters(system, "payment"),
                until=lambda n: n >= 1,
                timeout=60,
                what="the charge dead-lettered",
            )

        async def state() -> str:
            found = await client.get(f"{system.api}/checkouts/{checkout_id}")
            return str(found.json()["state"])

        assert await state() == "PAYMENT_PENDING"
        dlq = Topology.from_settings(system.settings).queues["payment"]
        async with watched(browser, system, tmp_path) as w:
            await w.sign_in(system)
            page = w.page
            await page.click("nav >> text=Stuck")
            await page.fill("#older_than", "1s")
            await page.click("form.inline button")
            item = page.locator(f"#stuck-{checkout_id}")
            listed = await item.inner_text()
            assert "PAYMENT_PENDING" in listed
            assert f"in {dlq.dlq}" in listed
            assert "payment deadline" in listed
            await keep_screenshot(page, "console-stuck.png")
            await item.locator("input[name=reason]").fill("payment service is back")
            await item.locator("button >> text=Replay").click()
            assert "Replayed 1 message" in await page.inner_text("#outcome")
            await eventually(state, until=lambda s: s == "PAID", timeout=30, what="PAID")
            await page.click("text=Back to stuck work")
            await page.fill("#older_than", "1s")
            await page.click("form.inline button")
            assert await page.locator(f"#stuck-{checkout_id}").count() == 0
            await page.click("nav >> text=Audit log")
            newest = await page.inner_text("#audit tbody tr:first-child")
            assert "development" in newest
            assert "payment service is back" in newest
    assert await dead_letters(system, "payment") == 0


async def test_a_cancelled_orders_page_shows_its_refund_and_the_cancellation(
    browser: Browser, system: System, tmp_path: Path
) -> None:
    order_id = await paid_order(system, name="Cancelled poster", amount="27.00")
    async with httpx.AsyncClient(headers=system.auth) as client:
        cancel = await client.post(
            f"{system.api}/orders/{order_id}/cancel", json={"reason": "changed my mind"}
        )
        assert cancel.status_code == 202, cancel.text
        cancellation_id = str(cancel.json()["cancellation_id"])

        async def status() -> str:
            return str((await client.get(f"{system.api}/orders/{order_id}")).json()["status"])

        await eventually(status, until=lambda s: s == "CANCELLED", timeout=60, what="CANCELLED")
    async with watched(browser, system, tmp_path) as w:
        await w.sign_in(system)
        page = w.page
        assert "SUCCEEDED" in await page.inner_text("#refunds")
        await page.goto(f"{system.api}/console/orders/{order_id}")
        assert await page.inner_text("#order-status") == "CANCELLED"
        assert "REFUNDED" in await page.inner_text("#payment")
        refund = await page.inner_text("#refunds")
        assert "SUCCEEDED" in refund
        assert "27.00" in refund
        assert cancellation_id in refund
        assert "changed my mind" in await page.inner_text("#cancellations")
        section = page.locator(f"#cancellation-{cancellation_id}")
        assert "CANCELLED" in await section.locator("h3").inner_text()
        assert await section.locator(".hop").count() >= 3
        assert await section.locator(".hop-transition").count() >= 1


async def test_the_event_log_lists_an_orders_events_and_backfills_a_queue(
    browser: Browser, system: System, tmp_path: Path
) -> None:
    order_id = await paid_order(system, name="Logged poster")
    queue = f"e2e-team-{uuid.uuid4().hex[:6]}"
    connection = await aio_pika.connect(system.settings.rabbit_url.get_secret_value())
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(queue, durable=True)

        async def fill(page: Page) -> None:
            await page.fill("#to_queue", queue)
            await page.fill("#bf_since", "1h")
            await page.fill("#bf_types", "OrderPaid")
            await page.fill("#bf_reason", "billing joined late")

        async with watched(browser, system, tmp_path) as w:
            await w.sign_in(system)
            page = w.page
            await page.click("nav >> text=Event log")
            assert "OrderPaid" in await page.inner_text("#events")
            await page.fill("#since", "")
            await page.fill("#order", order_id)
            await page.click("#filter button")
            mine = await page.inner_text("#events")
            assert "OrderPaid" in mine
            assert order_id in mine
            await keep_screenshot(page, "console-events.png")
            await fill(page)
            await page.click("#backfill button >> text=Dry run")
            would = await page.inner_text("#outcome")
            assert f"to {queue}" in would
            assert "would copy" in would
            assert await depth(channel, queue) == 0
            await page.goto(f"{system.api}/console/events")
            await fill(page)
            await page.click("#backfill button.primary")
            done = await page.inner_text("#outcome")
            copied = int(done.split("Copied ", 1)[1].split()[0])
            assert copied >= 1
            assert copied == int(would.split("would copy ", 1)[1].split()[0])
            assert await depth(channel, queue) == copied
            await page.click("nav >> text=Audit log")
            newest = await page.inner_text("#audit tbody tr:first-child")
            for shown in ("development", "backfill", queue, "billing joined late"):
                assert shown in newest
        await channel.queue_delete(queue)


async def test_purge_one_dead_letter(browser: Browser, system: System, tmp_path: Path) -> None:
    order_id = await paid_order(
        system, name="Bounced poster", email=f"bounce-{uuid.uuid4().hex[:6]}@example.com"
    )
    await eventually(
        lambda: dead_letters(system, "email"),
        until=lambda n: n >= 1,
        timeout=60,
        what="the bounced e-mail dead-lettered",
    )
    before = await dead_letters(system, "email")
    dlq = Topology.from_settings(system.settings).queues["email"]
    async with watched(browser, system, tmp_path) as w:
        await w.sign_in(system)
        page = w.page
        await page.goto(f"{system.api}/console/dead-letters/{dlq.name}")
        letter = page.locator("tbody.letter", has_text=order_id)
        await letter.locator("input[name=message_id]").check()
        await page.fill("#reason", "a test address")
        # Without the confirmation: refused, 400 (which the browser logs as an error).
        w.expected.append("status of 400")
        await page.click("button.danger >> text=Purge")
        assert "tick the confirmation" in await page.inner_text("p.error")
        assert await dead_letters(system, "email") == before
        await page.go_back()
        letter = page.locator("tbody.letter", has_text=order_id)
        await letter.locator("input[name=message_id]").check()
        await page.fill("#reason", "a test address")
        await page.check("input[name=confirm]")
        await page.click("button.danger >> text=Purge")
        assert "Purged 1 message" in await page.inner_text("#outcome")
    assert await dead_letters(system, "email") == before - 1


async def test_revoking_a_key_ends_its_session(
    browser: Browser, system: System, tmp_path: Path
) -> None:
    engine = create_engine(system.settings, pool_size=1)
    try:
        name = f"night-shift-{uuid.uuid4().hex[:6]}"
        made = await create_key(engine, name, Role.operator)
    finally:
        await engine.dispose()
    async with (
        watched(browser, system, tmp_path / "theirs") as theirs,
        watched(browser, system, tmp_path / "mine") as mine,
    ):
        await theirs.sign_in(system, made.token)
        assert await theirs.page.inner_text("#signed-in-as") == name
        await mine.sign_in(system)
        await mine.page.click("nav >> text=API keys")
        await mine.page.click(f"button[aria-label='revoke {name}']")
        assert "is revoked" in await mine.page.inner_text(".notice")
        await theirs.page.reload()
        await theirs.page.wait_for_url("**/console/sign-in")
        assert await theirs.page.inner_text("h1") == "Sign in"


async def test_the_banner_says_where_each_parts_health_and_metrics_are(system: System) -> None:
    banner = next(
        json.loads(line)
        for line in system.log.read_text(errors="replace").splitlines()
        if line.startswith("{") and '"checkout is up"' in line
    )
    health = banner["health"]
    assert set(health) == {"api", "relay", "saga", "invoice", "email", "production"}
    assert banner["console"] == f"{system.api}/console"
    async with httpx.AsyncClient() as client:
        for part, url in health.items():
            assert (await client.get(f"{url}/health/ready")).status_code == 200, part
        saga = (await client.get(f"{health['saga']}/metrics")).text
        relay = (await client.get(f"{health['relay']}/metrics")).text
    assert "checkout_saga_transitions_total" in saga
    assert "checkout_outbox_pending_rows" not in saga  # only the relay knows
    assert "checkout_outbox_pending_rows" in relay
