"""``rotate backup`` and ``rotate drill``: plain functions, registered on the ``rotate`` app in cli/app.py.

Both check their input first (store URI, destination, keys), so bad input is one line and exit status 1 before
anything is written; then they run their flow in this process and print its summary (ids, names, counts).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cli.output import clear_errors, console

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
        summary = restore_drill(destination, signer=signer, gnupg_home=home)
        console.print_json(json.dumps(summary, default=str))
