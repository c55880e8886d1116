"""``rotate demo``: rotate the example auth service's JWT key while it serves, with nothing but this machine."""

from __future__ import annotations

import getpass
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cli.example_service import ensure_keyset, start_service
from cli.terminal import run_here
from errors import BadInput
from flows.jwt import JwtPolicy, rotate_jwt_signing_key
from rotation.approval import Preapproval
from rotation.journal import Journal
from rotation.options import RotationOptions
from targets.consumers import Consumer, HttpReload
from targets.http import http_client


def _short(kid: str) -> str:
    return kid[:12] + "…" if len(kid) > 13 else kid


def _accepted(base: str, token: str) -> str:
    answer = http_client().get(f"{base}/me", headers={"Authorization": f"Bearer {token}"}, timeout=5)
    return "accepted" if answer.is_success else f"rejected ({answer.status_code})"


def run_demo(folder: Path, *, yes: bool, wait_seconds: float, console: Console) -> None:
    """Create a local store with a keyset, start the service, rotate its key end to end, and show what changed."""
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        (folder / ".write-check").touch()
        (folder / ".write-check").unlink()
    except OSError as exc:
        raise BadInput(f"--dir {folder}: cannot write there ({exc.strerror}); give a folder you may write to") from None
    uri = f"local://{folder / 'store.db'}?secret=auth-jwt"
    journal = Journal(folder / "journal.db")
    ensure_keyset(uri, console)
    service, base = start_service(uri, folder / "auth_service.log")
    try:
        console.print(f"example auth service at {base} (log: {escape(str(folder / 'auth_service.log'))})")
        old_token = http_client().post(f"{base}/token", json={"sub": "demo-user"}, timeout=5).json()["access_token"]
        before = http_client().get(f"{base}/health", timeout=5).json()
        options = RotationOptions(
            started_by=getpass.getuser(),
            allow_self_approval=True,
            journal=journal.location,
            max_sleep_seconds=3600,
            preapproved=Preapproval(approver=getpass.getuser()) if yes else None,
        )
        summary = run_here(
            lambda: rotate_jwt_signing_key(
                uri,
                consumers=[
                    Consumer(name="auth-service", restart=HttpReload(url=f"{base}/reload"), verify_url=f"{base}/me")
                ],
                policy=JwtPolicy(token_lifetime_seconds=wait_seconds / 2, grace_seconds=wait_seconds / 2),
                options=options,
            ),
            journal,
            console,
        )
        after = http_client().get(f"{base}/health", timeout=5).json()
        new_token = http_client().post(f"{base}/token", json={"sub": "demo-user"}, timeout=5).json()["access_token"]
        table = Table("", "before", "after", title=f"rotation {summary['rotation_id']}: {summary['state']}")
        table.add_row("signing key", _short(before["signing_kid"]), _short(after["signing_kid"]))
        table.add_row("keys loaded", ", ".join(map(_short, before["kids"])), ", ".join(map(_short, after["kids"])))
        table.add_row("token issued before the rotation", "accepted", _accepted(base, old_token))
        table.add_row("token issued after the rotation", "", _accepted(base, new_token))
        console.print(table)
        console.print(f"audit trail: rotate status {summary['rotation_id']} --journal {escape(journal.location)}")
    finally:
        service.terminate()
        service.wait(timeout=10)
