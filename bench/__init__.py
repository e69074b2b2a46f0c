"""The benchmark: `make bench` (`python -m bench.run`), see README "The benchmark".

```
bench.run      the driver: raw limits, starts the system as processes, two load phases,
               the scale-out check, the report; `--search-million` for the search mode
bench.system   the system's parts as child processes (own database, namespace, ports)
bench.raw      what the machine can do at all: psycopg two-insert transactions/s,
               aio-pika confirmed publishes/s, the relay alone draining an outbox
bench.load     the HTTP load generator (open loop at a fixed rate, closed loop at full speed)
bench.observe  CPU seconds and memory per process from /proc; outbox lag and progress
               sampled from the database
bench.search   a million orders loaded with COPY, then `GET /orders?name=` timed
bench.profile  optional py-spy profile of one part at full speed, summarised
bench.report   the terminal tables and the JSON under bench/results/
```

Nothing here is imported by the system; timing never goes into a test's assertions
(`tests/bench/test_bench_smoke.py` only checks that a short run produces its report).
"""
