"""Runbook: restore secrets from a backup, into the store they came from or into another kind of store.

1. Verify the backup: the manifest's signature (by the required signer), the archive's SHA-256, its decryption and
every checksum.  2. Plan: per secret created, updated, unchanged or blocked (a rotation holds its PENDING stage),
with version ids and no values; shown to the approver as an artifact.  3. Refuse the restore if a secret is blocked.
4. Approve the plan.  5. Restore each secret to create or update, one step each, its undo recorded first.  6. Check
every value in the target against its keyed checksum.  7. Optionally rotate each restored secret with the runbook
that last rotated it: a restored secret is treated as compromised.

The restore owns the target selection (``local:///srv/store.db?secret=*``) as a rotation owns its secret, so two
restores into one selection never run at once. Any failure before step 7 rolls back what was written: created
secrets are deleted and updated ones reverted. Nothing is written before the approval.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from flows import (  # noqa: F401 - each registers its runbook: a restored secret's last rotation names one of them
    jwt,
    postgres,
    redis_password,
    saml,
    smtp,
)
from rotation import RotationOptions, Undo, rotation, runbook, runbooks
from rotation.journal import Journal
from tasks.backup import (
    BackupRef,
    plan_restore,
    restore_secret,
    show_restore_plan,
    undo_restore_secret,
    verify_backup,
    verify_restored,
)


@runbook("restore", undos=[undo_restore_secret])
@flow(name="restore-secrets", log_prints=False, persist_result=False)
def restore_secrets(
    backup: BackupRef, into: str, rotate_after: bool = False, options: RotationOptions | None = None
) -> dict[str, Any]:
    """Restore ``backup`` into the selection ``into`` (``aws://prod/*?region=...``; the part of each name the
    backup's ``*`` matched replaces ``into``'s ``*``), after an approval of its plan."""
    with rotation(into, options) as r:
        facts = r.check("verify-backup", verify_backup, backup)
        plan = r.check("plan", plan_restore, backup, into)
        r.check("show-plan", show_restore_plan, plan, r.id)
        r.check("nothing-blocked", plan.refuse_blocked)
        r.approve(
            "approve-restore",
            f"Restore backup {backup.backup_id} of {facts.source} into {into} ({plan.summary})?",
        )
        for planned in plan.changes:
            r.apply(
                f"restore:{planned.name}",
                restore_secret,
                backup,
                planned,
                r.id,
                undo=Undo(
                    undo_restore_secret,
                    action=planned.action,
                    previous_version=planned.target_previous,
                    target=planned.target,
                    name=planned.name,
                    backup=backup,
                ),
            )
        checked = r.verify("check-restored", verify_restored, backup, plan)
    rotated = [_rotate_compromised(p.target, r.id, options) for p in plan.changes] if rotate_after else []
    return {
        **r.summary(),
        "plan": plan.counts,
        "versions_checked": checked.versions_checked,
        "rotations": [rotation_id for rotation_id in rotated if rotation_id],
    }


def _rotate_compromised(secret: str, restore_id: str, options: RotationOptions | None) -> str | None:
    """Rotate ``secret`` with the runbook and parameters of its last rotation in the journal, as the restore's
    person and approvals; the new rotation's id, or None (never rotated here: it is for a person to rotate)."""
    options = options or RotationOptions()
    last = [r for r in Journal(options.journal).list() if r.secret == secret and r.runbook != "restore"]
    if not last:
        get_run_logger().warning("%s has no rotation in the journal to repeat: rotate it by hand", secret)
        return None
    record = max(last, key=lambda r: r.started_at)
    book = runbooks.named(record.runbook)
    parameters = {**record.parameters, "options": options.model_copy(update={"resume": None})}
    name = f"compromised-{restore_id[:8]}-{record.runbook}"
    return book.flow.with_options(flow_run_name=name)(**parameters)["rotation_id"]
