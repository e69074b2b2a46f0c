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

The transport is aiohttp's client. Every message the saga and two of the consumers
handle makes one of these calls, and httpx (with httpcore and anyio beneath it) cost
those processes a fifth to a third of their CPU per message, against about a quarter
of that for aiohttp (the benchmark's profiles, README "The benchmark"). Each call is
a client span of its own (`POST <path>`), whose context goes out in the request's
`traceparent`, so the services' work joins the checkout's trace.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import structlog
from opentelemetry import trace
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
from infra.tracing import inject, tracer

log = structlog.get_logger()

MAX_BACKOFF = 2.0
"""Seconds at most between two in-process attempts of one call (before jitter)."""


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


def build_http_client(settings: Settings) -> aiohttp.ClientSession:
    """One pooled client per process, built in its event loop; closed by its lifespan.

    `http_timeout` bounds a whole call (connecting, sending, the answer); proxies and
    the like from the environment are ignored: the services are addressed directly.
    """
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=settings.http_timeout),
        connector=aiohttp.TCPConnector(limit=64, limit_per_host=32),
        trust_env=False,
    )


class ServiceClient:
    """A named external service at `base_url`, called with retry and classification."""

    def __init__(
        self,
        name: str,
        client: aiohttp.ClientSession,
        base_url: str,
        *,
        attempts: int = 3,
        max_backoff: float = MAX_BACKOFF,
        breakers: AsyncCircuitBreakerFactory | None = None,
    ) -> None:
        self.name = name
        self._client = client
        self._base_url = base_url.rstrip("/")
        self._attempts = attempts
        self._max_backoff = max_backoff
        self._breakers = breakers
        # What the service last failed with, for the message of a call the open breaker
        # stops: "breaker is open" alone would hide the cause from whoever reads it (a
        # dead letter's last error, say).
        self._last_failure: str | None = None

    async def post(self, path: str, payload: dict[str, Any], *, idempotency_key: str) -> Any:
        """POST JSON; return the decoded 2xx body, or raise a classified failure."""
        body, _ = await self.post_counted(path, payload, idempotency_key=idempotency_key)
        return body

    async def post_counted(
        self, path: str, payload: dict[str, Any], *, idempotency_key: str
    ) -> tuple[Any, int]:
        """Like `post`, and also say how many attempts it took."""
        async for attempt in self._retrying():
            with attempt:
                body = await self._guarded(path, payload, idempotency_key)
                return body, attempt.retry_state.attempt_number
        raise AssertionError("unreachable: tenacity re-raises the last failure")

    async def get_or_none(self, path: str) -> Any:
        """GET; the decoded 2xx body, None on 404 (nothing there), else a classified
        failure. Retried like a POST; a GET changes nothing, so it needs no key."""
        async for attempt in self._retrying():
            with attempt:
                try:
                    return await self._guarded(path, None, None, method="GET")
                except _NotFound:
                    return None
        raise AssertionError("unreachable: tenacity re-raises the last failure")

    def _retrying(self) -> AsyncRetrying:
        """A call's attempts: transient failures retried with jittered backoff."""
        return AsyncRetrying(
            stop=stop_after_attempt(self._attempts),
            wait=wait_exponential_jitter(multiplier=0.1, max=self._max_backoff, jitter=0.1),
            retry=retry_if_exception_type(TransientFailure),
            reraise=True,
        )

    async def _guarded(
        self, path: str, payload: dict[str, Any] | None, key: str | None, *, method: str = "POST"
    ) -> Any:
        if self._breakers is None:
            return await self._send(method, path, payload, key)
        try:
            async with await self._breakers.get_breaker(self.name):
                return await self._send(method, path, payload, key)
        except OpenedState as exc:
            metrics.SERVICE_CALLS.labels(self.name, "circuit_open").inc()
            cause = f"; the last failure: {self._last_failure}" if self._last_failure else ""
            raise TransientFailure(f"{self.name} service circuit breaker is open{cause}") from exc
        except TransientFailure as exc:
            self._last_failure = str(exc)
            raise

    async def _send(
        self, method: str, path: str, payload: dict[str, Any] | None, key: str | None
    ) -> Any:
        url = f"{self._base_url}{path}"
        with tracer().start_as_current_span(
            f"{method} {path}",
            kind=trace.SpanKind.CLIENT,
            attributes={"http.request.method": method, "url.full": url, "peer.service": self.name},
        ) as span:
            headers: dict[str, str] = {}
            data: str | None = None
            if payload is not None:  # a GET sends no body, so says no type for one
                headers["Content-Type"] = "application/json"
                data = json.dumps(payload)
            if key is not None:
                headers["Idempotency-Key"] = key
            inject(headers)
            try:
                async with self._client.request(
                    method, url, data=data, headers=headers
                ) as response:
                    status = response.status
                    content = await response.read()
            except TimeoutError as exc:
                metrics.SERVICE_CALLS.labels(self.name, "transient").inc()
                log.warning("service call timed out", service=self.name)
                raise TransientFailure(f"{self.name} service timed out ({url})") from exc
            except aiohttp.ClientError as exc:
                metrics.SERVICE_CALLS.labels(self.name, "transient").inc()
                log.warning("service unreachable", service=self.name, error=repr(exc))
                raise TransientFailure(f"{self.name} service unreachable ({url}): {exc!r}") from exc
            span.set_attribute("http.response.status_code", status)
            if status >= 400:
                span.set_status(trace.StatusCode.ERROR)
        if 200 <= status < 300:
            metrics.SERVICE_CALLS.labels(self.name, "success").inc()
            return _json_or_none(self.name, status, content)
        if status == 404 and method == "GET":
            metrics.SERVICE_CALLS.labels(self.name, "success").inc()  # it answered
            raise _NotFound(f"{self.name} service has nothing at {path}")
        text = content.decode("utf-8", errors="replace")
        detail = f"{self.name} service answered {status}: {text[:300]}"
        if is_transient_status(status):
            metrics.SERVICE_CALLS.labels(self.name, "transient").inc()
            log.warning("service call failed; transient", service=self.name, status=status)
            raise TransientFailure(detail)
        metrics.SERVICE_CALLS.labels(self.name, "permanent").inc()
        raise ServiceRefused(detail, status, _json_or_text(content))


class ServiceRefused(PermanentFailure):
    """The service refused the request for good (a 4xx other than 408/429).

    Carries the status and the decoded body, for a caller to whom one refusal is an
    outcome rather than a failure (the Production Service's 409 `cancelled`).
    """

    def __init__(self, detail: str, status: int, body: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.body = body

    @property
    def reason(self) -> str | None:
        """The body's `reason`, if it is a JSON object that has one."""
        reason = self.body.get("reason") if isinstance(self.body, dict) else None
        return reason if isinstance(reason, str) else None


def _json_or_text(content: bytes) -> Any:
    try:
        return json.loads(content)
    except ValueError:
        return content.decode("utf-8", errors="replace")


class _NotFound(PermanentFailure):
    """A GET answered 404: an answer (nothing there), not a failure of the service. A
    permanent failure to the breaker (which excludes those: the service answered);
    `get_or_none` turns it into None."""


def _json_or_none(service: str, status: int, content: bytes) -> Any:
    """A 2xx answer's JSON body (None if empty). A body that is not JSON is a broken
    answer, not a refusal: transient, so the call is tried again."""
    if not content:
        return None
    try:
        return json.loads(content)
    except ValueError:
        raise TransientFailure(
            f"{service} service answered {status} with a body that is not JSON: {content[:100]!r}"
        ) from None
