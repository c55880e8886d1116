"""What every ``rotate`` command that starts a rotation shares: its options, its consumers, its approvals given in
advance, and running it here with its approvals answered at the terminal."""

from __future__ import annotations

import getpass
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import TypeAdapter, ValidationError

from cli.output import console
from cli.terminal import run_here
from errors import BadInput
from rotation.approval import Preapproval, same_person
from rotation.journal import Journal
from rotation.options import RotationOptions
from targets.consumers import Consumer, HttpReload

JournalOption = Annotated[
    str | None,
    typer.Option(
        help="Rotation journal: a file, or a postgresql:// URL (default: $ROTATE_JOURNAL or ~/.local/state/...)"
    ),
]


def consumers_from(consumers_file: Path | None, reload_url: str | None, verify_url: str | None) -> list[Consumer]:
    consumers: list[Consumer] = []
    if consumers_file is not None:
        try:
            text = consumers_file.read_text()
        except OSError as exc:
            raise BadInput(f"--consumers {consumers_file}: cannot read it ({exc.strerror}); give a JSON file") from None
        try:
            consumers = TypeAdapter(list[Consumer]).validate_json(text)
        except ValidationError as exc:
            first = exc.errors(include_input=False)[0]
            where = ".".join(map(str, first["loc"])) or "the document"
            raise BadInput(
                f"--consumers {consumers_file}: not a JSON list of consumers ({where}: {first['msg']}); see the "
                "README's command-line section for the format"
            ) from None
    if reload_url or verify_url:
        restart = HttpReload(url=reload_url) if reload_url else None
        consumers.append(Consumer(name="service", verify_url=verify_url, **({"restart": restart} if restart else {})))
    return consumers


Consumers = Annotated[Path | None, typer.Option("--consumers", help="JSON list of consumers to restart and verify")]
ReloadUrl = Annotated[str | None, typer.Option(help="Reload endpoint of a single consumer")]
Yes = Annotated[bool, typer.Option("--yes", help="Approve every step in advance: the run never pauses")]
NoApproval = Annotated[bool, typer.Option("--no-approval", help="Do not ask before promoting")]
ApproveRetire = Annotated[bool, typer.Option(help="Ask before retiring the old credential")]
SelfApproval = Annotated[bool, typer.Option(help="Let the person who starts the run approve it")]
Approver = Annotated[str, typer.Option(help="Name recorded for --yes approvals (default: the OS user)")]
Grace = Annotated[float, typer.Option(help="Grace period before the old credential is retired, seconds")]


def preapproval(yes: bool, approver: str, started_by: str, allow_self_approval: bool) -> Preapproval | None:
    """``--yes`` as a decision given in advance; refused here, before anything starts, when four eyes forbid it."""
    if not yes:
        return None
    name = approver or getpass.getuser()
    if same_person(name, started_by) and not allow_self_approval:
        raise BadInput(
            f"--yes approves as {name}, who also starts this run, and approving needs a second person: pass "
            "--allow-self-approval (if this deployment allows it), or leave out --yes and let someone else approve"
        )
    return Preapproval(approver=name)


def rotation_options(
    no_approval: bool, approve_retire: bool, allow_self_approval: bool, journal: str | None, yes: bool, approver: str
) -> RotationOptions:
    started_by = getpass.getuser()
    return RotationOptions(
        started_by=started_by,
        approve_promote=not no_approval,
        approve_retire=approve_retire,
        allow_self_approval=allow_self_approval,
        journal=journal,
        preapproved=preapproval(yes, approver, started_by, allow_self_approval),
    )


def launch(secret: str, runbook: Callable[[], dict[str, Any]], journal: str | None) -> None:
    """Run ``runbook`` here, answering its approvals at the terminal, and print its summary (ids and states)."""
    summary = run_here(runbook, Journal(journal), console)
    console.print_json(json.dumps(summary, default=str))
