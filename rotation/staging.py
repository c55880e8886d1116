"""``rotate stage``: a person gives a rotation the value it waits for (a password set by hand at a provider, a
certificate a CA signed), and the run that waits for it goes on.

The value never travels as a flow parameter: it is read here, built into the secret's next value by the function
the runbook declared for the waiting step, staged as the rotation's PENDING version, and the run is told (a decision
addressed to that step, as an approval is). A run that has stopped finds the value staged when it is resumed.
"""

from __future__ import annotations

import uuid

from errors import Refused
from redaction import fingerprint, register_secret
from rotation import runbooks
from rotation.approval import ApprovalDecision, NotWaitingForApproval, give_decision, waiting_for
from rotation.journal import Journal
from stores import Stage, open_store


def stage_value(journal: Journal, rotation_id: str, entered: str, person: str) -> tuple[str, ApprovalDecision | None]:
    """Stage ``entered`` for the step rotation ``rotation_id`` waits at; returns the staged value's fingerprint and
    the decision sent to its live run (None when the run has stopped: resume it)."""
    record = journal.get(rotation_id)
    if record.state.finished:
        raise Refused(f"rotation {rotation_id} of {record.secret} is already {record.state}; it takes no value")
    awaiting = [s for s in journal.steps(rotation_id).values() if s.kind == "await" and not s.completed]
    if not awaiting:
        raise Refused(
            f"rotation {rotation_id} of {record.secret} is not waiting for a value; `rotate status {rotation_id}` "
            "shows where it is"
        )
    step = awaiting[-1]
    build = runbooks.named(record.runbook).input(step.detail["build"])
    store = open_store(record.secret)
    base = step.detail.get("base")
    value = register_secret(build(store.read(Stage.CURRENT) if base is None else store.read_version(base), entered))
    store.stage(value, rotation_id)
    staged = fingerprint(store.read_version(rotation_id))
    if staged != fingerprint(value):
        raise Refused(
            f"rotation {rotation_id} already has a different value staged; roll it back (`rotate rollback "
            f"{rotation_id}`) to start again"
        )
    waiting = waiting_for(journal, rotation_id, record.flow_run_id) if record.lease_live() else None
    if waiting is None or waiting.step != step.name:
        return staged, None
    decision = ApprovalDecision(
        decision="approve",
        approver=person,
        reason="value staged with rotate stage",
        rotation_id=rotation_id,
        step=step.name,
        decision_id=str(uuid.uuid4()),
    )
    try:
        give_decision(waiting.flow_run_id, decision)  # waits for the server to show the run paused
    except NotWaitingForApproval:
        raise Refused(
            f"staged {staged} for rotation {rotation_id}, but its run did not pause to take it; run this command "
            "again with the same value once `rotate status` shows the rotation paused"
        ) from None
    return staged, decision
