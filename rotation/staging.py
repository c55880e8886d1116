"""``rotate stage``: a person gives a rotation the value it waits for (a password set by hand at a provider, a
certificate a CA signed), and the run that waits for it goes on.

The value never travels as a flow parameter: it is read here, built into the secret's next value by the function
the runbook declared for the waiting step, staged as the rotation's PENDING version, and the run is told (a decision
addressed to that step, as an approval is). A run that has stopped finds the value staged when it is resumed.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from errors import Refused
from redaction import fingerprint, register_secret
from rotation import runbooks
from rotation.approval import ApprovalDecision, NotWaitingForApproval, give_decision, waiting_for
from rotation.journal import Journal
from rotation.settings import settings
from stores import Stage, open_store


@dataclass(frozen=True)
class Staged:
    """What ``rotate stage`` did: the staged value's fingerprint, and how the rotation's run learnt of it."""

    fingerprint: str
    #: The decision sent to the live run that paused for the value; None when it did not need one.
    decision: ApprovalDecision | None
    #: The live run found the value staged before it paused, and went on without being told.
    taken: bool = False


def stage_value(journal: Journal, rotation_id: str, entered: str, person: str, settle_seconds: float = 60) -> Staged:
    """Stage ``entered`` for the step rotation ``rotation_id`` waits at, and tell its live run.

    A live run may not be paused yet (it records the step's start, then asks): it is given ``settle_seconds`` to
    pause for the value or to find it staged and go on. A run that has stopped finds the value when it is resumed.
    """
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
    deadline = time.monotonic() + settle_seconds
    while True:
        record = journal.get(rotation_id)
        if journal.steps(rotation_id)[step.name].completed:
            return Staged(staged, None, taken=True)
        late = time.monotonic() > deadline
        # An expired lease alone does not tell a stopped run from one renewing late: told "stopped", a person
        # would leave a run that goes on waiting for them until it times out and rolls back.
        if not record.lease_live() and (late or record.run_gone(settings().lease_seconds)):
            return Staged(staged, None)
        waiting = waiting_for(journal, rotation_id, record.flow_run_id)
        if waiting is not None and waiting.step == step.name:
            break
        if late:
            raise _not_taken(staged, rotation_id)
        time.sleep(0.2)
    decision = ApprovalDecision(
        decision="approve",
        approver=person,
        reason="value staged with rotate stage",
        rotation_id=rotation_id,
        step=step.name,
        decision_id=str(uuid.uuid4()),
    )
    try:
        give_decision(waiting.flow_run_id, decision, settle_seconds=max(1.0, deadline - time.monotonic()))
    except NotWaitingForApproval:
        raise _not_taken(staged, rotation_id) from None
    return Staged(staged, decision)


def _not_taken(staged: str, rotation_id: str) -> Refused:
    return Refused(
        f"staged {staged} for rotation {rotation_id}, but its run did not pause to take it; run this command again "
        "with the same value once `rotate status` shows the rotation paused"
    )
