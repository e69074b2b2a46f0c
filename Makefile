# The two commands a newcomer needs: `make run` and `make test`.
# Both bootstrap .venv themselves (created if missing, project installed into it).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test venv lint typecheck clean bench bench-search peers drill chaos chaos-deadlines

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Reinstall when the dependency list changes.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

## make run: migrate the database, declare the broker topology, start every part
run: $(STAMP)
	$(BIN)/checkout up

## make test: the whole suite against the real PostgreSQL and RabbitMQ
test: $(STAMP)
	$(BIN)/pytest

## make bench: the system as processes under load, about two minutes (README "The benchmark");
## options after ARGS=, e.g. make bench ARGS="--copies 2"
bench: $(STAMP)
	$(BIN)/python -m bench.run $(ARGS)

## make bench-search: GET /orders?name= on a million orders (loading them takes a while)
bench-search: $(STAMP)
	$(BIN)/python -m bench.run --search-million $(ARGS)

## make peers: the product beside Celery and the inline endpoint in ../shared/peers, one
## run, about five minutes (README "The benchmark"); the harness's variables pass through,
## e.g. make peers PEERS="product celery"
peers: $(STAMP)
	bench/peers.sh

## make chaos: the fault suite's chaos run alone (4 s payment deadlines firing during it;
## CHECKOUT_CHAOS_DEADLINES=0 keeps the default deadline); chaos-deadlines: the same
chaos chaos-deadlines: $(STAMP)
	$(BIN)/pytest tests/faults/test_chaos.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy contracts checkout_api saga consumers infra operations mock_services

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info

## make drill: the system on a 3-node RabbitMQ cluster, haproxy and PgBouncer (Debian's
## packages, on ports of their own), three nodes killed in turn under load; a few minutes.
## Options after ARGS=, e.g. make drill ARGS="--short --via list" (README "Past one machine")
drill: $(STAMP)
	@command -v haproxy >/dev/null && command -v pgbouncer >/dev/null || \
		{ echo "make drill needs haproxy and pgbouncer: apt-get install -y haproxy pgbouncer"; exit 1; }
	$(BIN)/python -m deploy.drill.run $(ARGS)
