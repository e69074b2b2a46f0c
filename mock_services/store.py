"""In-memory record of one simulated service: an entry per idempotency key, an outage switch.

An entry collects every request that carried its key (`attempts`) and, once one of them
got a final answer (2xx or a permanent 4xx), that answer, which every later request with
the key gets back. A request without a key is an entry of its own (`idempotency_key` null).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

JsonObject = dict[str, Any]


@dataclass
class Entry:
    """The requests that carried one idempotency key and the final answer they got."""

    idempotency_key: str | None
    request: JsonObject
    attempts: int = 0
    final: tuple[int, JsonObject] | None = None
    """The stored answer (status code, body), replayed to every later request."""
    answered: bool = False
    """Whether the final answer was sent to a caller yet (a slow one may still be asleep):
    only then can the service be asked what became of the key (`GET /payments/{key}`)."""

    def as_json(self, *, status_code: bool = False) -> JsonObject:
        """The inspection view: the contract's four fields, and the stored answer's status
        code (null while there is none) if asked for."""
        code, response = self.final or (None, None)
        view = {
            "idempotency_key": self.idempotency_key,
            "attempts": self.attempts,
            "request": self.request,
            "response": response,
        }
        if status_code:
            view["status_code"] = code
        return view


@dataclass
class Outage:
    """Whether a simulated system is down; one system may offer several services (the
    Payment Service charges and refunds), which then share one switch."""

    down: bool = False


class EffectStore:
    """The entries of one simulated service, its outage switch and a lock per key."""

    def __init__(self, switch: Outage | None = None) -> None:
        self.switch = switch if switch is not None else Outage()
        self._entries: list[Entry] = []
        self._by_key: dict[str, Entry] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    @property
    def down(self) -> bool:
        return self.switch.down

    @down.setter
    def down(self, value: bool) -> None:
        self.switch.down = value

    def lock(self, key: str | None) -> asyncio.Lock:
        """The lock that lets one request with `key` at a time decide its answer."""
        if key is None:
            return asyncio.Lock()
        return self._locks.setdefault(key, asyncio.Lock())

    def attempt(self, key: str | None, request: JsonObject) -> Entry:
        """Count one more request with `key`; the first one creates the entry."""
        entry = self._by_key.get(key) if key is not None else None
        if entry is None:
            entry = Entry(idempotency_key=key, request=request)
            self._entries.append(entry)
            if key is not None:
                self._by_key[key] = entry
        entry.attempts += 1
        return entry

    def find(self, key: str) -> Entry | None:
        """The entry of `key`, if a request carried it."""
        return self._by_key.get(key)

    def entries(self) -> list[Entry]:
        """Every entry, oldest first."""
        return list(self._entries)

    def answered(self, status_code: int, **request: object) -> list[Entry]:
        """The entries whose stored answer has `status_code` and whose request has the
        given fields (e.g. ``order_id="..."``), oldest first."""
        return [
            entry
            for entry in self._entries
            if entry.final is not None
            and entry.final[0] == status_code
            and all(entry.request.get(name) == value for name, value in request.items())
        ]

    def reset(self) -> None:
        """Forget every entry and switch the outage off."""
        # A request still holding an old lock finishes on its orphaned entry; a new request
        # with that key after the reset starts afresh, which is what a reset means.
        self.down = False
        self._entries.clear()
        self._by_key.clear()
        self._locks.clear()
