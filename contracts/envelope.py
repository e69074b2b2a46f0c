"""How every message travels: AMQP properties and headers, shared by all message kinds.

Each message is a JSON body (one of the models in this package) with these AMQP
properties:

- ``message_id``: UUID, unique per message; consumers de-duplicate by it;
- ``correlation_id``: the checkout_id the message belongs to;
- ``type``: the model's name (``OrderPaid``, ...);
- ``content_type``: ``application/json``; ``timestamp``; delivery mode persistent;
- header ``x-schema-version``: integer version of the body's schema.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

CONTENT_TYPE = "application/json"
SCHEMA_VERSION_HEADER = "x-schema-version"


class Message(BaseModel):
    """Base of every message body; subclasses name their type, routing key and version."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    message_type: ClassVar[str]
    routing_key: ClassVar[str]
    schema_version: ClassVar[int] = 1

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if "message_type" not in cls.__dict__:
            cls.message_type = cls.__name__
