"""``rotate posture`` and ``rotate audit``: plain functions, registered on the ``rotate`` app in cli/app.py.

``rotate posture`` checks its input (store URIs, the policy file, the backup destination) before a flow run starts,
runs the posture flow in this process, prints the report as a table (or JSON) and exits with status 3 when the
policy is broken, so a pipeline can gate on it. ``rotate audit`` reads the journal only.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from cli import temporary_server
from cli.output import clear_errors, console, err
from cli.rotating import JournalOption
from cli.terminal import prefect_reachable
from errors import BadInput

if TYPE_CHECKING:
    from targets.posture.policy import PosturePolicy

#: The exit status of ``rotate posture`` when a check of the policy fails (1 is bad input, as for every command).
POLICY_BROKEN = 3
_AGO = re.compile(r"^(\d+(?:\.\d+)?)([dhm])$")
_STATUS = {"ok": "[green]ok[/green]", "warn": "[yellow]warn[/yellow]", "fail": "[red]fail[/red]"}


def _policy(path: Path | None) -> PosturePolicy:
    from targets.posture.policy import PosturePolicy

    if path is None:
        return PosturePolicy()
    try:
        text = path.read_text()
    except OSError as exc:
        raise BadInput(f"--policy {path}: cannot read it ({exc.strerror}); give a JSON file") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadInput(
            f"--policy {path}: not JSON ({exc.msg} at line {exc.lineno}); see the README's posture "
            "section for the fields"
        ) from None
    return PosturePolicy.model_validate(data)


def posture(
    stores: Annotated[
        list[str], typer.Argument(help="Store URIs, one per environment; a name ending in '*' selects a prefix")
    ],
    policy: Annotated[Path | None, typer.Option(help="Policy file (JSON): max ages, key sizes...")] = None,
    backups: Annotated[
        list[str] | None,
        typer.Option(help="A backup destination to check (folder or s3:// URI): backups and drills (repeatable)"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON")] = False,
    journal: JournalOption = None,
) -> None:
    """Is every secret rotated in time, strong, unique per environment, backed up? Exit status 3 if not."""
    from flows.posture import secret_posture
    from targets.backup.destination import open_destination
    from tasks.backup import Selection

    with clear_errors():
        checked = _policy(policy)
        for store in stores:
            Selection.parse(store).names()  # a bad URI, an unreachable store or no match: one line, before a run
        for destination in backups or []:
            open_destination(destination).backups()
        prefect_reachable()
        if temporary_server.api_url() is not None:
            err.print(
                "note: PREFECT_API_URL is not set, so the report runs on a temporary local Prefect server, which "
                "has none of your deployments: every schedule will show as missing"
            )
        report = secret_posture(stores, policy=checked, backups=backups, journal=journal)
    if as_json:
        console.print_json(json.dumps(report))
    else:
        _print(report)
    if report["policy_broken"]:
        raise typer.Exit(POLICY_BROKEN)


def _print(report: dict[str, Any]) -> None:
    from targets.posture.checks import PostureReport
    from targets.posture.render import COLUMNS, table_rows

    parsed = PostureReport.model_validate(report)
    table = Table(*COLUMNS, title=f"secret posture, {parsed.generated_at:%Y-%m-%d %H:%M} UTC", show_lines=False)
    for row in table_rows(parsed):
        table.add_row(*(_STATUS[v] if k == "status" else escape(v) for k, v in row.items()))
    console.print(table)
    for finding in parsed.findings:
        where = finding.secret or "backups"
        console.print(
            f"{_STATUS[finding.severity]} [bold]{escape(finding.section.value)}[/bold] {escape(where)}: "
            f"{escape(finding.what)}\n    -> {escape(finding.advice)}"
        )
    counts = parsed.counts
    verdict = "[red]policy broken[/red]" if parsed.policy_broken else "[green]policy holds[/green]"
    console.print(f"{verdict}: {counts['secrets']} secrets, {counts['fail']} failed checks, {counts['warn']} warnings")


def _time(text: str | None, option: str) -> datetime | None:
    """An ISO 8601 date or time (UTC unless it says otherwise), or an age: 7d, 12h, 30m ago."""
    if text is None:
        return None
    ago = _AGO.match(text.strip())
    if ago:
        unit = {"d": "days", "h": "hours", "m": "minutes"}[ago[2]]
        return datetime.now(UTC) - timedelta(**{unit: float(ago[1])})
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        raise BadInput(
            f"{option} {text!r} is not a time: give 2026-11-30, 2026-11-30T09:00, or an age like 7d, 12h, 30m"
        ) from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def audit(
    secret: Annotated[str | None, typer.Option(help="Only this secret (a store URI, any spelling)")] = None,
    person: Annotated[str | None, typer.Option(help="Only what this person started, approved, rejected...")] = None,
    since: Annotated[str | None, typer.Option(help="From this time (ISO 8601, or an age: 7d, 12h)")] = None,
    until: Annotated[str | None, typer.Option(help="Up to this time (ISO 8601, or an age)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the trail as JSON")] = False,
    journal: JournalOption = None,
) -> None:
    """Who started, approved, refused, rejected, resumed and rolled back which rotation of which secret, and when."""
    from rotation.journal import Journal
    from rotation.trail import audit_trail
    from stores import open_store

    with clear_errors():
        identity = open_store(secret).uri.display if secret else None
        start, end = _time(since, "--since"), _time(until, "--until")
        entries = audit_trail(Journal(journal, create=False), identity, person, start, end)
    if as_json:
        console.print_json(json.dumps([e.model_dump(mode="json") for e in entries]))
        return
    table = Table()
    for column in ("at (UTC)", "action", "person"):
        table.add_column(column, no_wrap=True)
    for column in ("secret", "rotation", "step", "reason"):
        table.add_column(column, overflow="fold")
    for e in entries:
        table.add_row(
            f"{e.at:%Y-%m-%d %H:%M:%S}",
            e.action,
            escape(e.person),
            escape(e.secret),
            e.rotation_id,
            escape(e.step),
            escape(e.reason),
        )
    console.print(table)
