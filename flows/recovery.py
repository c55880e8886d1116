"""Runbooks for a rotation whose run stopped: resume it forward, or roll it back to the previous working state.

Both are refused while the rotation's own run is alive (its lease in the journal is live); once its lease has
expired they take the rotation over and mark the stopped run Crashed. A resumed rotation's run ends as its runbook's
would (Rejected, RolledBack, Failed: :mod:`rotation.outcomes`).
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

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


@ending_in_named_states
@flow(name="roll-back-rotation", persist_result=False)
def rollback_rotation(rotation_id: str, journal: str | None = None, reason: str = "rolled back by an operator") -> str:
    """Undo a rotation that has not passed its point of no return; safe to run again if it stops half-way."""
    get_run_logger().info("Rolling back rotation %s: %s", rotation_id, reason)
    roll_back_stopped(Journal(journal, create=False), rotation_id, reason)
    return rotation_id


@ending_in_named_states
@flow(name="resume-rotation", persist_result=False)
def resume_rotation(
    rotation_id: str, journal: str | None = None, preapproved: Preapproval | None = None
) -> dict[str, Any]:
    """Run a stopped rotation's runbook again with its recorded parameters; completed steps are not repeated.

    Approvals given in advance to the first run are not carried over: ``preapproved`` gives them for this one.
    """
    record = Journal(journal, create=False).get(rotation_id)
    parameters = dict(record.parameters)
    options = dict(parameters.get("options") or {})
    options.update(resume=rotation_id, journal=journal or options.get("journal"), preapproved=preapproved)
    parameters["options"] = options
    return runbooks.named(record.runbook).flow(**parameters)
