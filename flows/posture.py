"""Runbook: the posture report. Is every secret rotated in time, strong, unique per environment, backed up?

1. Read every secret of the configured stores: its versions and dates, and what its CURRENT value is and how strong
(the value never leaves the task).  2. Read the newest rotation of each from the journal.  3. Read the Prefect
deployments that rotate them, and whether their schedules are active.  4. With a backup destination, read when each
secret was last backed up and the last restore drill.  5. Check it all against the policy.  6. Publish the report
(a table and a markdown artifact) and tell Prefect whether the policy holds (the automation notifies on a broken
one). The flow returns the report as JSON; ``rotate posture`` exits non-zero when the policy is broken.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prefect import flow
from prefect.utilities.annotations import quote

from rotation.history import read_rotations
from targets.posture.checks import assess
from targets.posture.policy import PosturePolicy
from tasks.posture import (
    announce_posture,
    inspect_secrets,
    publish_posture,
    read_backups,
    read_schedules,
)


@flow(name="secret-posture", log_prints=False, persist_result=False)
def secret_posture(
    stores: list[str],
    policy: PosturePolicy | None = None,
    backups: list[str] | None = None,
    journal: str | None = None,
) -> dict[str, Any]:
    """The posture of every secret of ``stores`` (store URIs; a name ending in ``*`` selects a prefix), each store
    one environment, against ``policy``; ``backups`` are the backup destinations to check, ``journal`` the rotation
    journal (default ``ROTATE_JOURNAL``)."""
    policy = policy or PosturePolicy()
    secrets = [facts for store in stores for facts in inspect_secrets(store, policy.certificate_renew_days)]
    # quote(): Prefect would visit every element of these large inputs, looking for upstream results.
    rotations = read_rotations(quote([s.uri for s in secrets]), journal)
    schedules = read_schedules()
    backed_up = [read_backups(destination) for destination in backups or []]
    report = assess(stores, secrets, rotations, schedules, backed_up, policy, datetime.now(UTC))
    publish_posture(quote(report))
    announce_posture(quote(report))
    return report.model_dump(mode="json")
