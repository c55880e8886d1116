"""Runbooks for a rotation whose run stopped: resume it forward, or roll it back to the previous working state.

Both are refused while the rotation's own run is alive (its lease in the journal is live); once its lease has
expired they take the rotation over and mark the stopped run Crashed. A resumed rotation's run ends as its runbook's
would (Rejected, RolledBack, Failed: :mod:`rotation.outcomes`).
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from errors import BadInput
from flows import (  # noqa: F401 - each registers its runbook, so a rotation can be found by id
    jwt,
    postgres,
    redis_password,
    restore,
    saml,
    smtp,
)
from rotation import runbooks
from rotation.approval import Preapproval
from rotation.compensation import roll_back_stopped
from rotation.journal import Journal
from rotation.outcomes import ending_in_named_states


def _named(operator: str, purpose: str) -> str:
    if not operator.strip():
        raise BadInput(f"operator is empty: name the person who asks for this {purpose} (the audit trail records it)")
    return operator.strip()


@ending_in_named_states
@flow(name="roll-back-rotation", persist_result=False)
def rollback_rotation(
    rotation_id: str, operator: str, journal: str | None = None, reason: str = "rolled back by an operator"
) -> str:
    """Undo a rotation that has not passed its point of no return; safe to run again if it stops half-way.

    ``operator``: who asks for it, named in the audit trail (``rotate rollback`` gives the OS user)."""
    operator = _named(operator, "rollback")
    get_run_logger().info("Rolling back rotation %s for %s: %s", rotation_id, operator, reason)
    roll_back_stopped(Journal(journal, create=False), rotation_id, reason, operator)
    return rotation_id


@ending_in_named_states
@flow(name="resume-rotation", persist_result=False)
def resume_rotation(
    rotation_id: str, operator: str, journal: str | None = None, preapproved: Preapproval | None = None
) -> dict[str, Any]:
    """Run a stopped rotation's runbook again with its recorded parameters; completed steps are not repeated.

    ``operator``: who asks for it, named in the audit trail (``rotate resume`` gives the OS user). Approvals given
    in advance to the first run are not carried over: ``preapproved`` gives them for this one.
    """
    operator = _named(operator, "resume")
    record = Journal(journal, create=False).get(rotation_id)
    parameters = dict(record.parameters)
    options = dict(parameters.get("options") or {})
    options.update(
        resume=rotation_id, resumed_by=operator, journal=journal or options.get("journal"), preapproved=preapproved
    )
    parameters["options"] = options
    return runbooks.named(record.runbook).flow(**parameters)
