"""TIME arguments: an RFC 3339 time, or a duration ago (`30s`, `15m`, `2h`, `7d`, `1w`)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

ACCEPTED = (
    "an RFC 3339 time (2026-12-04T10:00:00Z, 2026-12-04T11:00:00+01:00, 2026-12-04) "
    "or a duration ago (30s, 15m, 2h, 7d, 1w)"
)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_RELATIVE = re.compile(r"^(\d{1,6})\s*([smhdw])$")


class BadTime(ValueError):
    """Not a time this command understands; the message lists the accepted forms."""

    def __init__(self, text: str) -> None:
        super().__init__(f"{text!r} is not a time: give {ACCEPTED}")


def parse_time(text: str, now: datetime) -> datetime:
    """`text` as an aware UTC time; a duration counts back from `now`.

    A time without an offset is taken as UTC.
    """
    value = text.strip()
    relative = _RELATIVE.match(value.lower())
    if relative:
        amount, unit = relative.groups()
        return now - timedelta(**{_UNITS[unit]: int(amount)})
    try:
        parsed = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        raise BadTime(text) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)
