"""Which dead-lettered messages an operation takes: all of them, or some by message id."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Selection:
    """Every message (`ids` is None), or the messages whose `message_id` is in `ids`.

    Every copy of a selected id is taken: a message dead-lettered twice (a crash
    between publish and ack upstream) is one message to the operator.
    """

    ids: tuple[str, ...] | None = None

    @classmethod
    def every(cls) -> Selection:
        return cls(None)

    @classmethod
    def of(cls, ids: Iterable[str]) -> Selection:
        unique = tuple(dict.fromkeys(i.strip() for i in ids if i.strip()))
        if not unique:
            raise ValueError("select at least one message id")
        return cls(unique)

    @property
    def takes_all(self) -> bool:
        return self.ids is None

    def matches(self, message_id: str | None) -> bool:
        return self.ids is None or (message_id is not None and message_id in self.ids)

    def missing(self, found: Iterable[str | None]) -> list[str]:
        """The asked-for ids that were not found, in the order they were asked for."""
        if self.ids is None:
            return []
        seen = set(found)
        return [i for i in self.ids if i not in seen]
