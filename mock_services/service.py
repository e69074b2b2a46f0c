"""The request pipeline every simulated service shares.

For each request: count the attempt under the key's lock, then answer 503 if the outage
switch is on or the random failure strikes, else replay the key's stored answer, else
validate the body and let the service decide. Final answers are stored before any sleep,
so a retry that arrives while a slow first request is still sleeping sees the effect;
the entry counts as answered (what `GET /payments/{key}` reports) only once an answer
with it has been sent.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from random import Random
from typing import Generic, TypeVar

import structlog
from pydantic import BaseModel, ValidationError

from mock_services.outcomes import Outcome, invalid, unavailable
from mock_services.store import EffectStore, Entry, JsonObject

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class ServiceSpec(Generic[M]):
    """One simulated service: its paths, its request model and how it answers."""

    name: str
    path: str
    """May hold path parameters (`/production/orders/{order_id}/cancel`); their values
    become fields of the request, as if the body had carried them."""
    inspect_path: str
    outage_path: str | None
    """None for a service that shares its system's switch (refunds: the payments')."""
    success_status: int
    model: type[M]
    decide: Callable[[M, int], Outcome]
    """Answer a valid request, given how many requests have carried its key so far."""
    describe: Callable[[JsonObject], dict[str, object]]
    """Fields of a recorded request worth logging (never a full e-mail address)."""


@dataclass(frozen=True)
class Chaos:
    """Failure and delay knobs shared by the three services of one app."""

    failure_rate: float
    latency_seconds: float
    slow_seconds: float
    rng: Random

    def strikes(self) -> bool:
        """Whether this request gets a random 503."""
        return self.failure_rate > 0 and self.rng.random() < self.failure_rate


class MockService(Generic[M]):
    """A simulated service at run time: its spec, its store and the app's chaos knobs."""

    def __init__(
        self, spec: ServiceSpec[M], chaos: Chaos, store: EffectStore | None = None
    ) -> None:
        self.spec = spec
        self.chaos = chaos
        self.store = store if store is not None else EffectStore()

    async def handle(
        self, key: str | None, body: bytes, path_params: Mapping[str, str] | None = None
    ) -> Outcome:
        """Answer one request to the service (see the module docstring for the order)."""
        if path_params:
            body = _with_path(body, path_params)
        request = _recorded(body)
        # Deciding takes no await today, so it could not interleave anyway; the lock keeps
        # "one effect per key" true should it ever await (and says so to the reader).
        async with self.store.lock(key):
            entry = self.store.attempt(key, request)
            outcome = self._answer(entry, body)
            if outcome.final and entry.final is None:
                entry.final = (outcome.status_code, outcome.body)
        structlog.get_logger().info(
            "mock_request",
            service=self.spec.name,
            idempotency_key=key,
            outcome=outcome.label,
            status_code=outcome.status_code,
            attempts=entry.attempts,
            **self.spec.describe(request),
        )
        delay = self.chaos.latency_seconds + (self.chaos.slow_seconds if outcome.slow else 0.0)
        if delay > 0:
            await asyncio.sleep(delay)
        if outcome.final:
            entry.answered = True
        return outcome

    def _answer(self, entry: Entry, body: bytes) -> Outcome:
        if self.store.down:
            return unavailable(f"{self.spec.name} is down (outage switch on)", "outage")
        if self.chaos.strikes():
            return unavailable("simulated random failure", "random_failure")
        if entry.final is not None:
            return Outcome(*entry.final, label="replayed")
        try:
            parsed = self.spec.model.model_validate_json(body)
        except ValidationError as exc:
            return invalid(exc)
        return self.spec.decide(parsed, entry.attempts)


def _recorded(body: bytes) -> JsonObject:
    """The request as the inspection lists it: the JSON object sent, or what was sent."""
    try:
        value = json.loads(body)
    except ValueError:
        return {"body": body.decode("utf-8", errors="replace")}
    return value if isinstance(value, dict) else {"body": value}


def _with_path(body: bytes, path_params: Mapping[str, str]) -> bytes:
    """The body (a JSON object, or nothing) with the path parameters as its fields."""
    if not body.strip():
        return json.dumps(dict(path_params)).encode()
    try:
        value = json.loads(body)
    except ValueError:
        return body  # refused as it is by validation
    if not isinstance(value, dict):
        return body
    return json.dumps({**value, **path_params}).encode()
