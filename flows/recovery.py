"""Runbooks for a rotation whose run stopped: resume it forward, or roll it back to the previous working state."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from rotation.context import roll_back
from rotation.journal import Journal
from rotation.runbooks import runbook_flow


@flow(name="roll-back-rotation", persist_result=False)
def rollback_rotation(rotation_id: str, journal: str | None = None, reason: str = "rolled back by an operator") -> str:
    """Undo a rotation that has not passed its point of no return; safe to run again if it stops half-way."""
    get_run_logger().info("Rolling back rotation %s: %s", rotation_id, reason)
    roll_back(Journal(journal), rotation_id, reason)
    return rotation_id


@flow(name="resume-rotation", persist_result=False)
def resume_rotation(rotation_id: str, journal: str | None = None) -> dict[str, Any]:
    """Run a stopped rotation's runbook again with its recorded parameters; finished steps are not repeated."""
    record = Journal(journal).get(rotation_id)
    parameters = dict(record.parameters)
    options = dict(parameters.get("options") or {})
    options.update(resume=rotation_id, journal=journal or options.get("journal"))
    parameters["options"] = options
    return runbook_flow(record.runbook)(**parameters)
