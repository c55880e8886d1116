"""What the rotation journal says of each secret for the posture report: its newest rotation, and when one last
completed. A task of the core's, as the journal is the core's: the posture report's other readers are in
:mod:`tasks.posture`."""

from __future__ import annotations

from datetime import datetime

from prefect import task
from prefect.cache_policies import NO_CACHE

from errors import NotFound
from rotation.journal import Journal, RotationRecord, RotationState
from targets.posture.facts import RotationFacts
from tasks import retry_if_transient

_RETRY = {"retries": 3, "retry_delay_seconds": [1, 5, 15], "retry_condition_fn": retry_if_transient}


def _rotation_facts(
    journal: Journal, newest: RotationRecord, locked: set[str], completed: datetime | None
) -> RotationFacts:
    due = None
    if newest.state == RotationState.WAITING:
        deferred = [e for e in journal.events(newest.id) if e.status == "deferred"]
        due = datetime.fromisoformat(deferred[-1].details["due"]) if deferred else None
    return RotationFacts(
        rotation_id=newest.id,
        runbook=newest.runbook,
        state=str(newest.state),
        started_by=newest.started_by,
        started_at=newest.started_at,
        updated_at=newest.updated_at,
        reason=newest.reason,
        lease_live=newest.lease_live(),
        holds_lock=newest.id in locked,
        due=due,
        last_completed_at=completed,
    )


@task(cache_policy=NO_CACHE, **_RETRY)
def read_rotations(secrets: list[str], journal: str | None = None) -> dict[str, RotationFacts]:
    """The newest rotation of each secret in the journal (and when one last completed); no journal: none."""
    try:
        book = Journal(journal, create=False)
    except NotFound:
        return {}
    wanted, newest, completed = set(secrets), {}, {}
    for record in book.list():  # newest first
        if record.secret not in wanted:
            continue
        newest.setdefault(record.secret, record)
        if record.state == RotationState.COMPLETED:
            completed.setdefault(record.secret, record.updated_at)
    locked = {record.id for record in book.list(active_only=True)}
    return {secret: _rotation_facts(book, record, locked, completed.get(secret)) for secret, record in newest.items()}
