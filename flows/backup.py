"""Runbook: back up every secret of a store (or of a name prefix), encrypted to the administrators' OpenPGP keys.

1. Read each selected secret (its CURRENT version, or every version that holds a stage) and write one encrypted
archive, a manifest without values, and the manifest's signature.  2. Read the backup back and check it: the
manifest's signature, the archive's SHA-256, the archive's recipients.  3. Delete the backups the retention policy
no longer keeps. Decrypting needs an administrator's secret key, which the backup host should not hold: the weekly
restore drill (flows/drill.py) proves that backups decrypt and restore.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from targets.backup.archive import StageSelection, new_id
from targets.backup.retention import RetentionPolicy
from tasks.backup import BackupRef, apply_retention, verify_backup, write_backup


class BackupPolicy(RetentionPolicy):
    """What is backed up (``current``: each secret's CURRENT version; ``all``: every version with a stage), and how
    many backups are kept."""

    stages: StageSelection = "current"


@flow(name="backup-secrets", log_prints=False, persist_result=False)
def backup_secrets(
    source: str,
    destination: str,
    recipients: list[str],
    policy: BackupPolicy | None = None,
    signing_key: str | None = None,
    gnupg_home: str | None = None,
) -> dict[str, Any]:
    """Back up the secrets ``source`` selects (``aws://prod/*?region=...``) to ``destination`` (a folder or an s3://
    URI), encrypted to ``recipients`` (key fingerprints), the manifest signed with ``signing_key`` if given."""
    policy = policy or BackupPolicy()
    logger = get_run_logger()
    written = write_backup(source, destination, recipients, policy.stages, new_id(), signing_key, gnupg_home)
    if written.skipped:
        logger.warning("Deleted while the backup ran, so not in it: %s", ", ".join(written.skipped))
    reference = BackupRef(
        destination=destination, backup_id=written.backup_id, gnupg_home=gnupg_home, signer=written.signer
    )
    verify_backup(reference, decrypt=False)
    deleted = apply_retention(destination, written.source, policy.keep_daily, policy.keep_monthly)
    logger.info(
        "Backup %s: %d secrets, %d versions, encrypted to %s; retention deleted %d backup(s)",
        written.backup_id,
        written.secrets,
        written.versions,
        ", ".join(written.recipients),
        len(deleted),
    )
    return {**written.model_dump(), "deleted": deleted}
