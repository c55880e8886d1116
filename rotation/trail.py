"""Who did what to which rotation of which secret, and when: the journal's audit records read back as actions.

Actions: ``started`` (by the person who started the run), ``approved``, ``refused`` (a decision the run did not
accept, and why) and ``rejected`` (by the approver who gave the decision), ``resumed`` (by the person who asked for
it, or ``automatic`` for a grace period's scheduled follow-up run) and ``rolled back``. A rollback names who caused
it: the person who asked for it (``rotate rollback``, or the ``operator`` of a ``roll-back-rotation`` run), the
approver who rejected, or ``automatic`` for a failure the runbook rolled back by itself, with the reason. Records
written before the journal kept that person's name say ``operator``.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict

from rotation.approval import same_person
from rotation.journal import AuditEvent, Journal, RotationRecord

_DECISIONS = ("approved", "refused", "rejected")


class AuditEntry(BaseModel):
    model_config = ConfigDict(frozen=True)

    at: datetime
    action: str  # started, approved, refused, rejected, resumed, rolled back
    person: str  # who; "automatic" when the runbook itself acted
    secret: str
    rotation_id: str
    runbook: str
    step: str
    reason: str = ""


def _entries(record: RotationRecord, events: list[AuditEvent]) -> list[AuditEntry]:
    def entry(event: AuditEvent, action: str, person: str, reason: str = "") -> AuditEntry:
        return AuditEntry(
            at=event.at,
            action=action,
            person=person,
            secret=record.secret,
            rotation_id=record.id,
            runbook=record.runbook,
            step=event.step,
            reason=reason,
        )

    found, rejecter, operator = [], None, None
    for event in events:
        details = event.details
        if event.step == "rotation" and event.status == "started":
            found.append(entry(event, "started", record.started_by))
        elif event.status in _DECISIONS and details.get("approver"):
            found.append(entry(event, event.status, str(details["approver"]), str(details.get("reason", ""))))
            if event.status == "rejected":
                rejecter = str(details["approver"])
        elif event.step == "rotation" and event.status == "resume-claimed":
            by = str(details.get("operator") or "operator")
            found.append(entry(event, "resumed", by, f"by flow run {details.get('flow_run') or '?'}"))
        elif event.step == "rotation" and event.status == "rollback-claimed":
            operator = str(details.get("operator") or "operator")
        elif event.step == "rotation" and event.status == "rolled-back":
            person = operator or rejecter or "automatic"
            found.append(entry(event, "rolled back", person, str(details.get("reason", record.reason))))
    return found


def audit_trail(
    journal: Journal,
    secret: str | None = None,
    person: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[AuditEntry]:
    """Every action of the journal's rotations, oldest first; ``secret`` is a secret's identity (canonical URI),
    ``person`` a name compared as approvals compare them (trimmed, case-folded)."""
    found = []
    for record in journal.list():
        if secret is not None and record.secret != secret:
            continue
        for item in _entries(record, journal.events(record.id)):
            if person is not None and not same_person(item.person, person):
                continue
            if (since is not None and item.at < since) or (until is not None and item.at > until):
                continue
            found.append(item)
    return sorted(found, key=lambda e: e.at)
