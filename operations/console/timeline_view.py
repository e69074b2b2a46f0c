"""A checkout's timeline as a drawing: each hop a bar at its offset, as long as it took.

The page draws it with SVG attributes (no inline styles, which the console's
Content-Security-Policy forbids): x and width in a 0-1000 box scaled to the span from
the checkout's first line to its last.
"""

from __future__ import annotations

from dataclasses import dataclass

from operations.timeline.merge import CheckoutTrace, Entry

WIDTH = 1000.0
MIN_BAR = 4.0  # a hop too short to see still shows as a tick


@dataclass(frozen=True)
class Hop:
    entry: Entry
    x: float
    width: float
    kind: str  # a CSS class: request, publish, transition, effect, retry, dead, replay, other


@dataclass(frozen=True)
class Drawn:
    trace: CheckoutTrace
    hops: list[Hop]


def kind_of(entry: Entry) -> str:
    kind = entry.kind
    if "retried" in kind:
        return "retry"
    if "dead_lettered" in kind or kind == "message.purged":
        return "dead"
    if "replayed" in kind:
        return "replay"
    if kind in ("http.request", "checkout.requested"):
        return "request"
    if kind.startswith("outbox."):
        return "publish"
    if kind == "saga.transition":
        return "transition"
    if kind in ("effect.applied", "message.processed", "payment.attempt"):
        return "effect"
    return "other"


def draw(trace: CheckoutTrace) -> Drawn:
    span = max(trace.span_ms, 1.0)
    hops = []
    for entry in trace.entries:
        duration = entry.duration_ms or 0.0
        # A duration ends at the line's time: the hop began `duration` before it.
        start = max(entry.offset_ms - duration, 0.0)
        x = WIDTH * start / span
        width = max(WIDTH * (entry.offset_ms - start) / span, MIN_BAR)
        hops.append(Hop(entry, round(min(x, WIDTH - MIN_BAR), 1), round(width, 1), kind_of(entry)))
    return Drawn(trace, hops)
