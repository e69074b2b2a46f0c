"""Calls to the external services (payment, email, production), classified for retry.

A call is retried in process a few times with exponential backoff and jitter when the
failure is transient (timeout, connection error, 5xx, 408, 429); if it still fails,
`TransientFailure` is raised and the message-level retry takes over (wait queues,
then the dead-letter queue). Other 4xx raise `PermanentFailure` at once.
Every call carries an `Idempotency-Key`, so any repetition is harmless.

A circuit breaker per service stops hammering a service that is down: after
`breaker_threshold` consecutive transient failures it opens, and for
`breaker_pause` seconds calls fail at once as transient (so their messages wait in
the retry queues, then the dead-letter queue); then one trial call decides whether
it closes again. Permanent failures do not count: the service answered.
"""

from __future__ import annotations

from typing import Any

import httpx
import structlog
from purgatory import AsyncCircuitBreakerFactory
from purgatory.domain.model import OpenedState
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from infra import metrics
from infra.messaging.failures import PermanentFailure, TransientFailure, is_transient_status
from infra.settings import Settings

log = structlog.get_logger()


def build_breakers(settings: Settings) -> AsyncCircuitBreakerFactory:
    """One breaker registry per process; each service gets its own named breaker."""
    factory = AsyncCircuitBreakerFactory(
        default_threshold=settings.breaker_threshold,
        default_ttl=settings.breaker_pause,
        exclude=[PermanentFailure],
    )
    factory.add_listener(_breaker_changed)
    return factory


def _breaker_changed(name: str, event_type: str, event: Any) -> None:
    if event_type != "state_changed":
        return
    is_open = event.state != "closed"
    metrics.BREAKER_OPEN.labels(name).set(1 if is_open else 0)
    if event.state == "opened":
        log.warning("circuit breaker opened: not calling the service for a while", service=name)
    else:
        log.info("circuit breaker state changed", service=name, state=event.state)


def build_http_client(settings: Settings) -> httpx.AsyncClient:
    """One pooled client per process; closed by the process's lifespan."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(settings.http_timeout),
        limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
    )


class ServiceClient:
    """A named external service at `base_url`, called with retry and classification."""

    def __init__(
        self,
        name: str,
        client: httpx.AsyncClient,
        base_url: str,
        *,
        attempts: int = 3,
        max_backoff: float = 2.0,
        breakers: AsyncCircuitBreakerFactory | None = None,
    ) -> None:
        self.name = name
        self._client = client
        self._base_url = base_url.rstrip("/")
        self._attempts = attempts
        self._max_backoff = max_backoff
        self._breakers = breakers

    async def post(self, path: str, payload: dict[str, Any], *, idempotency_key: str) -> Any:
        """POST JSON; return the decoded 2xx body, or raise a classified failure."""
        body, _ = await self.post_counted(path, payload, idempotency_key=idempotency_key)
        return body

    async def post_counted(
        self, path: str, payload: dict[str, Any], *, idempotency_key: str
    ) -> tuple[Any, int]:
        """Like `post`, and also say how many attempts it took."""
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._attempts),
            wait=wait_exponential_jitter(multiplier=0.1, max=self._max_backoff, jitter=0.1),
            retry=retry_if_exception_type(TransientFailure),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                body = await self._guarded(path, payload, idempotency_key)
                return body, attempt.retry_state.attempt_number
        raise AssertionError("unreachable: tenacity re-raises the last failure")

    async def _guarded(self, path: str, payload: dict[str, Any], key: str) -> Any:
        if self._breakers is None:
            return await self._post_once(path, payload, key)
        try:
            async with await self._breakers.get_breaker(self.name):
                return await self._post_once(path, payload, key)
        except OpenedState as exc:
            metrics.SERVICE_CALLS.labels(self.name, "circuit_open").inc()
            raise TransientFailure(f"{self.name} service circuit breaker is open") from exc

    async def _post_once(self, path: str, payload: dict[str, Any], key: str) -> Any:
        url = f"{self._base_url}{path}"
        try:
            response = await self._client.post(url, json=payload, headers={"Idempotency-Key": key})
        except httpx.TimeoutException as exc:
            metrics.SERVICE_CALLS.labels(self.name, "transient").inc()
            log.warning("service call timed out", service=self.name)
            raise TransientFailure(f"{self.name} service timed out ({url})") from exc
        except httpx.TransportError as exc:
            metrics.SERVICE_CALLS.labels(self.name, "transient").inc()
            log.warning("service unreachable", service=self.name, error=repr(exc))
            raise TransientFailure(f"{self.name} service unreachable ({url}): {exc!r}") from exc
        if response.is_success:
            metrics.SERVICE_CALLS.labels(self.name, "success").inc()
            return response.json() if response.content else None
        detail = f"{self.name} service answered {response.status_code}: {response.text[:300]}"
        if is_transient_status(response.status_code):
            metrics.SERVICE_CALLS.labels(self.name, "transient").inc()
            log.warning(
                "service call failed; transient", service=self.name, status=response.status_code
            )
            raise TransientFailure(detail)
        metrics.SERVICE_CALLS.labels(self.name, "permanent").inc()
        raise PermanentFailure(detail)
