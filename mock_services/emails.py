"""The simulated Email Service: `POST /emails`; a `bounce*@...` recipient is a hard bounce."""

from __future__ import annotations

from uuid import uuid4

from pydantic import BaseModel, ConfigDict, Field

from infra.logging import mask_email
from mock_services.outcomes import Outcome, problem
from mock_services.service import ServiceSpec
from mock_services.store import JsonObject

BOUNCE_PREFIX = "bounce"


class EmailRequest(BaseModel):
    """One e-mail to send. Extra fields are kept, unchecked."""

    model_config = ConfigDict(extra="allow")

    to: str = Field(pattern=r"^[^@\s]+@[^@\s]+$", max_length=320)
    subject: str
    body: str


def decide(email: EmailRequest, attempts: int) -> Outcome:
    """Accept the e-mail, or refuse it for good if the mailbox bounces."""
    local_part = email.to.partition("@")[0]
    if local_part.lower().startswith(BOUNCE_PREFIX):
        body = problem(
            422,
            "mailbox-bounced",
            "Mailbox bounced",
            f"the mailbox {mask_email(email.to)} does not exist (permanent failure)",
        )
        return Outcome(422, body, "bounced")
    return Outcome(202, {"email_id": str(uuid4()), "status": "SENT"}, "sent")


def describe(request: JsonObject) -> dict[str, object]:
    """The recipient, masked, for the log."""
    to = request.get("to")
    return {"to": mask_email(to) if isinstance(to, str) else None}


EMAILS = ServiceSpec(
    name="emails",
    path="/emails",
    inspect_path="/mock/emails",
    outage_path="/mock/emails/outage",
    success_status=202,
    model=EmailRequest,
    decide=decide,
    describe=describe,
)
