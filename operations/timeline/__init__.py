"""The checkout timeline: every hop of one checkout, in time order (`checkout trace`).

- `merge`: pure merging of every source's rows into one timeline per checkout;
- `query`: loads those rows (PostgreSQL, and optionally the dead-letter queues);
- `render`: a rich timeline for a terminal, and the JSON document for tools.

The rows are written on the hot path by `infra.timeline.record` (plumbing, like the
logs and metrics: every part writes them, so it stays in infra).
"""
