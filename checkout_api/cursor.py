"""Opaque keyset cursors for newest-first paging over (created_at, order_id).

A cursor is the URL-safe base64 (unpadded) of 25 bytes: a version byte, the
created_at of the last order on the page in microseconds since the epoch (PostgreSQL's
precision, so the round trip is exact), and its order_id. The next page is every order
strictly before that pair, which stays correct while new orders arrive.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

_VERSION = 1
_LAYOUT = struct.Struct(">Bq16s")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_ALPHABET = re.compile(r"[A-Za-z0-9_-]{1,64}")


class InvalidCursor(ValueError):
    """The cursor was not made by `encode_cursor`."""


@dataclass(frozen=True, slots=True)
class PageCursor:
    """The position after which the next page starts."""

    created_at: datetime
    order_id: uuid.UUID


def encode_cursor(cursor: PageCursor) -> str:
    micros = (cursor.created_at - _EPOCH) // _MICROSECOND
    raw = _LAYOUT.pack(_VERSION, micros, cursor.order_id.bytes)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(text: str) -> PageCursor:
    """Parse a cursor; `InvalidCursor` for anything `encode_cursor` did not produce."""
    if not _ALPHABET.fullmatch(text):
        raise InvalidCursor("not a cursor returned by this API")
    try:
        raw = base64.urlsafe_b64decode(text.encode("ascii") + b"=" * (-len(text) % 4))
        version, micros, order_id = _LAYOUT.unpack(raw)
        if version != _VERSION:
            raise InvalidCursor("unknown cursor version")
        return PageCursor(_EPOCH + micros * _MICROSECOND, uuid.UUID(bytes=order_id))
    except (binascii.Error, struct.error, OverflowError) as exc:
        raise InvalidCursor("not a cursor returned by this API") from exc
