"""Watching a group commit (`infra.db.batching.Batcher`) from a test."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class Counted:
    """Counts the batches (of more than one item) a batcher runs, and their sizes."""

    def __init__(self, batcher: Any) -> None:
        self.sizes: list[int] = []
        self._run = batcher._run_batch
        batcher._run_batch = self

    async def __call__(self, items: Sequence[Any]) -> Any:
        self.sizes.append(len(items))
        return await self._run(items)
