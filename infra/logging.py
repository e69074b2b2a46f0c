"""structlog set-up: coloured key-value lines on a terminal, JSON lines otherwise.

Context (component, checkout_id, order_id, message_id) is bound with
`structlog.contextvars.bound_contextvars` around each request or message, so every
line logged while handling it carries those ids.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import structlog

from infra.settings import Settings
from infra.tracing import add_trace_ids


def mask_email(address: str) -> str:
    """`jane.doe@example.com` -> `j***@example.com`: enough to correlate, not to harvest."""
    local, _, domain = address.partition("@")
    return f"{local[:1]}***@{domain}" if domain else "***"


def configure_logging(settings: Settings, component: str) -> None:
    """Route structlog and the standard library (uvicorn, faststream) through one renderer."""
    level = getattr(logging, settings.log_level.upper())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        add_trace_ids,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any
    if settings.log_format == "json":
        renderer = structlog.processors.JSONRenderer()
        shared.append(structlog.processors.format_exc_info)
    else:
        colors = sys.stderr.isatty() or bool(os.environ.get("FORCE_COLOR"))
        # Plain tracebacks: rich's show local variables (customer data, settings).
        renderer = structlog.dev.ConsoleRenderer(
            colors=colors, exception_formatter=structlog.dev.plain_traceback
        )

    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # uvicorn's access log duplicates our request log; its error log stays.
    logging.getLogger("uvicorn.access").disabled = True
    # FastStream's own logger carries a handler of its own; route it through ours.
    faststream_logger = logging.getLogger("faststream")
    faststream_logger.handlers.clear()
    faststream_logger.propagate = True
    # psycopg's pool logs every connection handed out and returned at INFO.
    for noisy in ("aiormq", "aio_pika", "httpx", "httpcore", "psycopg.pool"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(component=component)
