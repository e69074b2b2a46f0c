"""The building blocks both pure state machines share. No I/O.

The checkout saga (`saga.state_machine`) and the cancellation saga
(`saga.cancellation_state_machine`) each decide their own transitions; what a
transition is made of is the same for both: a history line (`Step`), the deadline
effects (`SetDeadline`, `CancelDeadline`), a doubling backoff for a question asked
again, and the line of an input that does not fit the state (`ignored`). Each machine
re-exports what it uses, so its effects read as its own.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Step:
    """One line of a saga's history."""

    name: str
    status: str
    detail: str | None = None


@dataclass(frozen=True)
class SetDeadline:
    """(Re)set the saga's deadline of `kind`: due after `after` seconds, or (None) at the
    time that saga's shell gives a new deadline of that kind (see each state machine)."""

    kind: str
    after: float | None = None


@dataclass(frozen=True)
class CancelDeadline:
    """Delete the saga's deadline of `kind`: what it waited for has happened."""

    kind: str


def doubling_backoff(fired: int, first: float, cap: float) -> float:
    """Seconds until the `fired`-th time a deadline fired (1-based) is followed by the
    next: doubling from `first`, at most `cap`."""
    return float(min(first * 2 ** max(fired - 1, 0), cap))


def ignored(input_name: str, state: str, saga: str) -> Step:
    """The history line of an input that does not apply to the saga's state: the state
    stays, and the line says so."""
    return Step(f"{input_name}.ignored", state, f"{input_name} does not apply to a {state} {saga}")


def after_attempts(attempts: int) -> str:
    """How a step's detail says an answer took more than one call ("" for one)."""
    return f" after {attempts} attempts" if attempts > 1 else ""
