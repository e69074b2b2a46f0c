"""Search cursors survive a round trip exactly and refuse anything else."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from checkout_api.cursor import InvalidCursor, PageCursor, decode_cursor, encode_cursor


@pytest.mark.parametrize(
    "at",
    [
        datetime(2026, 11, 22, 10, 30, 1, 123456, tzinfo=UTC),
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2026, 1, 1, 12, tzinfo=timezone(timedelta(hours=5, minutes=30))),
    ],
)
def test_round_trip_is_exact(at: datetime) -> None:
    cursor = PageCursor(at, uuid.uuid4())
    text = encode_cursor(cursor)
    assert decode_cursor(text) == cursor
    assert text.isascii()
    assert "=" not in text
    assert "+" not in text
    assert "/" not in text


def test_cursor_is_url_safe_and_short() -> None:
    text = encode_cursor(PageCursor(datetime.now(UTC), uuid.uuid4()))
    assert len(text) <= 40
    assert all(c.isalnum() or c in "-_" for c in text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "abc",
        "not a cursor",
        "!!!!",
        "A" * 33,
        "ä" * 34,
        "A" * 65,
        # valid base64 of the right length but another version byte
        "AgAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    ],
)
def test_malformed_cursors_are_refused(text: str) -> None:
    with pytest.raises(InvalidCursor):
        decode_cursor(text)


def test_tampered_version_is_refused() -> None:
    good = encode_cursor(PageCursor(datetime.now(UTC), uuid.uuid4()))
    with pytest.raises(InvalidCursor):
        decode_cursor("Z" + good[1:])
