"""Knobs of the fault suite: how long the chaos lasts and which seed draws it.

- `CHECKOUT_FAULTS_SECONDS` (default 60): seconds of injected faults in the chaos run;
  e.g. `CHECKOUT_FAULTS_SECONDS=600 pytest tests/faults -s` for a long soak.
- `CHECKOUT_FAULTS_SEED`: replay a run's plan (the seed is printed at the start and in
  the report); random when unset.
"""

from __future__ import annotations

import os
import random

import pytest

DEFAULT_SECONDS = 60.0


def fault_seconds() -> float:
    return float(os.environ.get("CHECKOUT_FAULTS_SECONDS", DEFAULT_SECONDS))


@pytest.fixture
def fault_seed() -> int:
    value = os.environ.get("CHECKOUT_FAULTS_SEED")
    seed = int(value) if value else random.SystemRandom().randrange(1, 2**31)
    print(f"\nfault run seed={seed} (replay with CHECKOUT_FAULTS_SEED={seed})", flush=True)
    return seed
