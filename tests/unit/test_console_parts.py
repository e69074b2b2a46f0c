"""The console's pure parts: the timeline drawing, and telling a cross-site post."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from starlette.requests import Request

from operations.console.timeline_view import MIN_BAR, WIDTH, draw, kind_of
from operations.console.web import cross_site
from operations.timeline.merge import CheckoutRow, CheckoutTrace, Entry

T0 = datetime(2026, 12, 4, 10, 0, tzinfo=UTC)


def _entry(offset_ms: float, kind: str, duration_ms: float | None = None) -> Entry:
    return Entry(
        at=T0 + timedelta(milliseconds=offset_ms),
        source="x",
        kind=kind,
        what=kind,
        duration_ms=duration_ms,
        offset_ms=offset_ms,
    )


def _trace(entries: list[Entry]) -> CheckoutTrace:
    checkout = CheckoutRow(uuid.uuid4(), uuid.uuid4(), "PAID", None, None, T0, T0)
    return CheckoutTrace(checkout, None, None, entries)


def test_a_hop_is_drawn_from_its_start_to_its_line_scaled_to_the_span() -> None:
    drawn = draw(
        _trace(
            [
                _entry(0, "http.request"),
                _entry(100, "outbox.published", duration_ms=50),
                _entry(200, "effect.applied", duration_ms=400),  # longer than its offset
            ]
        )
    )
    first, published, applied = drawn.hops
    assert (first.x, first.width) == (0, MIN_BAR)  # an instant still shows
    assert (published.x, published.width) == (250.0, 250.0)  # began at 50 of 200 ms
    assert (applied.x, applied.width) == (0, WIDTH)  # clipped to the checkout's start
    assert [h.kind for h in drawn.hops] == ["request", "publish", "effect"]


@pytest.mark.parametrize(
    ("kind", "css"),
    [
        ("message.retried", "retry"),
        ("message.dead_lettered", "dead"),
        ("message.purged", "dead"),
        ("message.replayed", "replay"),
        ("saga.transition", "transition"),
        ("payment.attempt", "effect"),
        ("duplicate.skipped", "other"),
    ],
)
def test_every_kind_of_hop_has_its_look(kind: str, css: str) -> None:
    assert kind_of(_entry(0, kind)) == css


def _request(**headers: str) -> Request:
    raw = [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    return Request({"type": "http", "method": "POST", "path": "/", "headers": raw})


@pytest.mark.parametrize(
    ("headers", "refused"),
    [
        ({"host": "127.0.0.1:8000"}, False),  # no Origin: a non-browser client
        ({"host": "127.0.0.1:8000", "origin": "http://127.0.0.1:8000"}, False),
        ({"host": "127.0.0.1:8000", "sec_fetch_site": "same-origin"}, False),
        ({"host": "127.0.0.1:8000", "origin": "http://127.0.0.1:8001"}, True),
        ({"host": "127.0.0.1:8000", "origin": "https://evil.example"}, True),
        ({"host": "127.0.0.1:8000", "origin": "null"}, True),
        ({"host": "127.0.0.1:8000", "sec_fetch_site": "same-site"}, True),
        ({"host": "127.0.0.1:8000", "sec_fetch_site": "cross-site"}, True),
    ],
)
def test_a_post_from_another_origin_is_cross_site(headers: dict[str, str], refused: bool) -> None:
    assert cross_site(_request(**headers)) is refused
