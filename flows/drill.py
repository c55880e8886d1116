"""Runbook: the restore drill. A backup that has never been restored is a hope.

1. Find the newest backup at the destination.  2. Verify it (signature, SHA-256, decryption, every checksum).
3. Plan and run its restore into a scratch local store in a temporary folder, with the same tasks a real restore
uses.  4. Check every restored value against its keyed checksum.  5. Destroy the scratch store (a drill killed
before it could is cleaned up by the next one, see targets/backup/scratch.py).  6. Record the
result beside the backups (``drills/<drill id>.json``: date, backup id, secrets and versions checked, result, and
why it failed), where the posture report reads it. A failed drill is recorded, then ends the run as Failed.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from errors import CheckFailed, RotationError
from redaction import redact
from targets.backup.archive import new_id
from targets.backup.drills import DrillRecord
from targets.backup.scratch import scratch_folder
from tasks.backup import (
    BackupRef,
    RestoreAction,
    find_latest_backup,
    plan_restore,
    record_drill,
    restore_secret,
    verify_backup,
    verify_restored,
)


class DrillFailed(CheckFailed):
    """The newest backup could not be restored, or a restored value did not match its checksum."""


@flow(name="restore-drill", log_prints=False, persist_result=False)
def restore_drill(destination: str, signer: str | None = None, gnupg_home: str | None = None) -> dict[str, Any]:
    """Restore the newest backup at ``destination`` into a scratch store, check it, and record the result.

    ``signer`` (a fingerprint) requires the manifest to be signed by the backup host's key; ``gnupg_home`` holds
    the secret key of one of the backup's recipients.
    """
    logger = get_run_logger()
    record = {"drill_id": new_id(), "at": datetime.now(UTC), "flow_run_id": str(flow_run.id or "") or None}
    failure: RotationError | None = None
    try:
        record["backup_id"] = find_latest_backup(destination)
        backup = BackupRef(destination=destination, backup_id=record["backup_id"], gnupg_home=gnupg_home, signer=signer)
        verify_backup(backup)
        with scratch_folder() as scratch:
            plan = plan_restore(backup, f"local://{scratch}/scratch.db?secret=*")
            blocked = [s.name for s in plan.secrets if s.action == RestoreAction.BLOCKED]
            if blocked:
                raise DrillFailed(f"backup {backup.backup_id} cannot restore {', '.join(blocked)}")
            restore_id = str(uuid.uuid4())
            for planned in plan.secrets:
                restore_secret(backup, planned, restore_id)
            checked = verify_restored(backup, plan)
        record.update(secrets_checked=checked.secrets_checked, versions_checked=checked.versions_checked)
    except RotationError as exc:
        failure = exc
    outcome = DrillRecord(
        **record, result="failed" if failure else "passed", reason=redact(str(failure)) if failure else None
    )
    where = record_drill(destination, outcome)
    if failure is not None:
        logger.error("Restore drill %s failed (recorded in %s): %s", outcome.drill_id, where, outcome.reason)
        raise DrillFailed(f"restore drill {outcome.drill_id} failed: {outcome.reason}") from None
    logger.info(
        "Restore drill %s passed: backup %s, %d secrets and %d versions restored and checked (recorded in %s)",
        outcome.drill_id,
        outcome.backup_id,
        outcome.secrets_checked,
        outcome.versions_checked,
        where,
    )
    return outcome.model_dump(mode="json")
