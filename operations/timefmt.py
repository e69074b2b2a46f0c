"""Times as the operator reads them, in the commands and the console alike."""

from __future__ import annotations

from datetime import UTC, datetime


def when(value: object) -> str:
    """A time (or ISO text) in UTC to the second: `2026-11-22 10:00:01`; "-" for None.

    Text that is no ISO time is shown as it is; an AMQP header's bytes are read as text.
    """
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    moment = value
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return value
    if isinstance(moment, datetime):
        if moment.tzinfo is not None:
            moment = moment.astimezone(UTC)
        return moment.strftime("%Y-%m-%d %H:%M:%S")
    return "-" if moment is None else str(moment)
