"""``rotate backup``, ``rotate drill`` and ``rotate restore``: plain functions, registered on the ``rotate`` app in
cli/app.py.

Each checks its input first (store URI, destination, keys), so bad input is one line and exit status 1 before
anything is written; then it runs its flow in this process and prints its summary (ids, names, counts). A restore
prints its plan first and asks for an approval at the terminal (or waits for one given elsewhere, or ``--yes``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated
from urllib.parse import urlsplit, urlunsplit

import typer
from rich.markup import escape
from rich.table import Table

from cli.output import clear_errors, console
from cli.rotating import preapproval
from cli.terminal import prefect_reachable, run_here
from errors import BadInput

if TYPE_CHECKING:
    from tasks.backup import BackupRef, RestorePlan

GnupgHome = Annotated[
    Path | None, typer.Option("--gnupg-home", help="gpg home holding the keys (default: $GNUPGHOME or ~/.gnupg)")
]
Destination = Annotated[
    str, typer.Option("--to", help="Backup folder (absolute path) or s3://BUCKET/PREFIX?region=R[&kms_key=KEY]")
]


def backup(
    source: Annotated[
        str,
        typer.Argument(help="Secrets to back up: a store URI whose name ends in '*' for a prefix, e.g. aws://prod/*"),
    ],
    destination: Destination,
    recipient: Annotated[
        list[str], typer.Option("--recipient", help="Fingerprint of an administrator's OpenPGP key (repeatable)")
    ],
    all_stages: Annotated[bool, typer.Option(help="Every version that holds a stage, not only CURRENT")] = False,
    signing_key: Annotated[str | None, typer.Option(help="Fingerprint of the key that signs the manifest")] = None,
    keep_daily: Annotated[int, typer.Option(help="Keep the newest backup of each of the last N days")] = 7,
    keep_monthly: Annotated[int, typer.Option(help="Keep the newest backup of each of the last M months")] = 12,
    gnupg_home: GnupgHome = None,
) -> None:
    """Back up secrets, encrypted to OpenPGP recipients, with a signed manifest that holds no values."""
    from flows.backup import BackupPolicy, backup_secrets
    from tasks.backup import check_backup_request

    home = str(gnupg_home) if gnupg_home else None
    with clear_errors():
        policy = BackupPolicy(
            stages="all" if all_stages else "current", keep_daily=keep_daily, keep_monthly=keep_monthly
        )
        # Listing proves the store answers and something matches, before a flow run starts.
        check_backup_request(source, destination, recipient, signing_key, home).selection.names()
        prefect_reachable()
        summary = backup_secrets(
            source, destination, recipient, policy=policy, signing_key=signing_key, gnupg_home=home
        )
        console.print_json(json.dumps(summary, default=str))


def drill(
    destination: Annotated[str, typer.Argument(help="Where the backups are (folder or s3:// URI)")],
    signer: Annotated[str | None, typer.Option(help="Require manifests signed by this key (fingerprint)")] = None,
    gnupg_home: GnupgHome = None,
) -> None:
    """Restore the newest backup into a scratch store, check every value, record the result beside the backups."""
    from flows.drill import restore_drill
    from targets.backup.destination import open_destination
    from targets.backup.openpgp import Keyring, normalise_fingerprint

    home = str(gnupg_home) if gnupg_home else None
    with clear_errors():
        open_destination(destination).check_writable()  # the drill writes its record there
        Keyring(home)
        if signer:
            normalise_fingerprint(signer)
        prefect_reachable()
        summary = restore_drill(destination, signer=signer, gnupg_home=home)
        console.print_json(json.dumps(summary, default=str))


def _backup_ref(backup: str, signer: str | None, gnupg_home: str | None) -> BackupRef:
    """``DESTINATION/ID`` names one backup; a destination alone, its newest."""
    from targets.backup.archive import is_backup_id
    from targets.backup.destination import open_destination
    from tasks.backup import BackupRef, find_latest_backup

    parts = urlsplit(backup)
    folder, _, last = parts.path.rstrip("/").rpartition("/")
    if is_backup_id(last):
        destination = urlunsplit(parts._replace(path=folder or "/"))
        open_destination(destination)
        return BackupRef(destination=destination, backup_id=last, gnupg_home=gnupg_home, signer=signer)
    return BackupRef(destination=backup, backup_id=find_latest_backup.fn(backup), gnupg_home=gnupg_home, signer=signer)


def _print_plan(plan: RestorePlan) -> None:
    table = Table("secret in the backup", "target", "action", "why", title=f"restore plan: {plan.summary}")
    for planned in plan.secrets:
        table.add_row(escape(planned.name), escape(planned.target), planned.action.value, escape(planned.reason or ""))
    console.print(table)


def restore(
    backup: Annotated[
        str,
        typer.Argument(help="DESTINATION/BACKUP_ID (a folder or s3:// URI, then the id), or a destination: its newest"),
    ],
    into: Annotated[
        str, typer.Option("--into", help="Store URI to restore into; a name ending in '*' for many, e.g. aws://prod/*")
    ],
    signer: Annotated[str | None, typer.Option(help="Require a manifest signed by this key (fingerprint)")] = None,
    rotate_after: Annotated[
        bool, typer.Option(help="Then rotate each restored secret with the runbook that last rotated it")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Approve the plan in advance: the run never pauses")] = False,
    approver: Annotated[str, typer.Option(help="Name recorded for --yes (default: the OS user)")] = "",
    allow_self_approval: Annotated[bool, typer.Option(help="Let the person who starts it approve it")] = False,
    journal: Annotated[str | None, typer.Option(help="Rotation journal (default: $ROTATE_JOURNAL)")] = None,
    gnupg_home: GnupgHome = None,
) -> None:
    """Restore secrets from a backup: print the plan (no values), then restore after an approval, and check it."""
    import getpass

    from flows.restore import restore_secrets
    from rotation.journal import Journal
    from rotation.options import RotationOptions
    from stores import open_store
    from stores.errors import SecretNotFound
    from tasks.backup import Selection, plan_restore

    home = str(gnupg_home) if gnupg_home else None
    with clear_errors():
        selection = Selection.parse(into)
        if selection.exact:
            try:
                open_store(into).describe()
            except SecretNotFound:
                raise BadInput(
                    f"{into} does not exist: to create secrets, restore into a name ending in '*' (aws://prod/*, "
                    "local:///srv/store.db?secret=*), which puts the backed-up names after its prefix"
                ) from None
        reference = _backup_ref(backup, signer, home)
        _print_plan(plan_restore.fn(reference, into))
        started_by = getpass.getuser()
        options = RotationOptions(
            started_by=started_by,
            allow_self_approval=allow_self_approval,
            journal=journal,
            preapproved=preapproval(yes, approver, started_by, allow_self_approval),
        )
        summary = run_here(
            lambda: restore_secrets(reference, into, rotate_after=rotate_after, options=options),
            Journal(journal),
            console,
        )
        console.print_json(json.dumps(summary, default=str))
