"""A part's start-up objects are frozen out of the collector's full collections."""

from __future__ import annotations

import subprocess
import sys

# In a process of its own: freezing the test process would keep every later test's
# garbage cycles alive.
PROBE = """
import gc, time
import saga.main  # a part's imports: FastStream, SQLAlchemy, pydantic, aio-pika
from infra.heap import freeze_startup

gc.collect()
tracked = len(gc.get_objects())
freeze_startup()
print(tracked, gc.get_freeze_count(), len(gc.get_objects()))
"""


def test_start_up_objects_are_frozen_and_no_longer_walked() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=120
    )
    tracked, frozen, left = map(int, done.stdout.splitlines()[-1].split())

    assert tracked > 50_000  # what a full collection walked before
    assert frozen >= tracked - 1_000
    assert left < 1_000  # what it walks now
