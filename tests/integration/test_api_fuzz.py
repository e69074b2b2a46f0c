"""schemathesis against the API's own OpenAPI document: no 5xx, every response as documented.

The API runs as a real process (`checkout api`) on a free port with this run's
database, and is called over HTTP with an operator key made by `checkout apikey
create`. Every operation gets `FUZZ_EXAMPLES` generated requests (schema-valid and
schema-violating ones; `CHECKOUT_FUZZ_EXAMPLES` raises it for a longer hunt), and
schemathesis' checks run on each response: no server error, a documented status,
content type and headers, a body that matches the response schema, invalid input
refused, and a request without the key refused.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import CheckFunction, GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from infra.localports import free_port
from infra.settings import Settings

pytestmark = pytest.mark.integration

FUZZ_EXAMPLES = int(os.environ.get("CHECKOUT_FUZZ_EXAMPLES", "30"))


def _wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"checkout api exited early with {process.returncode}")
        try:
            if httpx.get(f"{url}/health/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)  # polling a process's port with a deadline, not waiting on a message
    raise AssertionError(f"checkout api at {url} was not ready within {timeout:g} s")


@pytest.fixture(scope="module")
def api_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "api.log"


@pytest.fixture(scope="module")
def api_process(settings: Settings, api_log: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """(base URL, auth headers) of `checkout api` running as its own process."""
    port = free_port()
    env = {
        **os.environ,
        "CHECKOUT_API_PORT": str(port),
        "CHECKOUT_LOG_LEVEL": "warning",
        "CHECKOUT_LOG_FORMAT": "json",
        # The fuzzer sends hundreds of requests with one key; the limit has its own test.
        "CHECKOUT_API_RATE_LIMIT": "100000/second",
    }
    create = ["apikey", "create", "--name", f"fuzz-{port}", "--role", "operator", "--json"]
    made = subprocess.run(
        [sys.executable, "-m", "infra.cli", *create],
        env=env,
        capture_output=True,
        check=True,
    )
    token = json.loads(made.stdout)["token"]
    log = api_log.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "infra.cli", "api"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, process)
        yield url, {"Authorization": f"Bearer {token}"}
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(20)
        log.close()


@pytest.fixture(scope="module")
def api_schema(api_process: tuple[str, dict[str, str]]) -> schemathesis.BaseSchema:
    url, _ = api_process
    return schemathesis.openapi.from_url(f"{url}/openapi.json")


def _operations(schema: schemathesis.BaseSchema) -> list[schemathesis.APIOperation]:
    return [result.ok() for result in schema.get_all_operations()]


# A cursor is valid only if this API issued it, which no schema can say: a generated one
# is refused (422), rightly, so "schema-valid data is accepted" cannot hold for it.
OPAQUE = {"GET /orders": [positive_data_acceptance]}


def _fuzzer(
    operation: schemathesis.APIOperation,
    mode: GenerationMode,
    auth: dict[str, str],
    excluded: list[CheckFunction],
) -> Callable[[], None]:
    """A hypothesis test calling `operation` with generated requests, every check on."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def call(case: schemathesis.Case) -> None:
        case.call_and_validate(headers=auth, timeout=10, excluded_checks=excluded)

    return call


# schemathesis' pytest plugin does not run on pytest 9 yet (it reads a private
# attribute pytest removed); its engine does, driven by hypothesis here, one
# operation and one generation mode at a time.
@pytest.mark.parametrize("mode", list(GenerationMode), ids=lambda m: m.value)
def test_the_api_keeps_to_its_openapi_document(
    api_schema: schemathesis.BaseSchema,
    api_process: tuple[str, dict[str, str]],
    api_log: Path,
    mode: GenerationMode,
) -> None:
    _, auth = api_process
    operations = _operations(api_schema)
    assert len(operations) >= 8, [op.label for op in operations]
    failures: dict[str, str] = {}
    for operation in operations:
        call = _fuzzer(operation, mode, auth, OPAQUE.get(operation.label, []))
        try:
            call()
        except Unsatisfiable:
            # Nothing to get wrong (GET /health/live takes no input): no negative case.
            assert mode is GenerationMode.NEGATIVE, operation.label
        except Exception as exc:  # one report for every operation, not the first only
            failures[operation.label] = str(exc)[:3000]
    errors = [line for line in api_log.read_text().splitlines() if '"level": "error"' in line]
    assert not failures, "\n\n".join(
        [f"{label}:\n{text}" for label, text in failures.items()] + ["api errors:", *errors[-5:]]
    )
