"""``rotate``: run, approve, inspect, resume and roll back rotations from a terminal."""

from __future__ import annotations

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no network here for telemetry

import getpass
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import TypeAdapter, ValidationError
from rich.console import Console
from rich.table import Table

from cli.terminal import run_with_approvals
from errors import RotationError
from rotation.approval import give_decision
from rotation.journal import Journal
from stores import open_store
from stores.errors import StoreError
from targets.consumers import Consumer, HttpReload

app = typer.Typer(no_args_is_help=True, help="Secret-rotation runbooks on Prefect.", pretty_exceptions_enable=False)
console = Console()
err = Console(stderr=True)

JournalOption = Annotated[
    Path | None, typer.Option(help="Rotation journal file (default: $ROTATE_JOURNAL or ~/.local/state/...)")
]


@contextmanager
def _clear_errors() -> Iterator[None]:
    """Turn the errors a user can act on into one red line and exit status 1; anything else is a bug: raise it."""
    try:
        yield
    except (StoreError, RotationError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_input=False))
        err.print(f"[red]error:[/red] invalid input: {problems}")
        raise typer.Exit(1) from None


def _consumers(consumers_file: Path | None, reload_url: str | None, verify_url: str | None) -> list[Consumer]:
    consumers: list[Consumer] = []
    if consumers_file is not None:
        consumers = TypeAdapter(list[Consumer]).validate_json(consumers_file.read_text())
    if reload_url or verify_url:
        restart = HttpReload(url=reload_url) if reload_url else None
        consumers.append(Consumer(name="service", verify_url=verify_url, **({"restart": restart} if restart else {})))
    return consumers


Consumers = Annotated[Path | None, typer.Option("--consumers", help="JSON list of consumers to restart and verify")]
ReloadUrl = Annotated[str | None, typer.Option(help="Reload endpoint of a single consumer")]
Yes = Annotated[bool, typer.Option("--yes", help="Approve every step without asking")]
NoApproval = Annotated[bool, typer.Option("--no-approval", help="Do not ask before promoting")]
ApproveRetire = Annotated[bool, typer.Option(help="Ask before retiring the old credential")]
SelfApproval = Annotated[bool, typer.Option(help="Let the person who starts the run approve it")]
Approver = Annotated[str, typer.Option(help="Name recorded for --yes approvals (default: the OS user)")]
Grace = Annotated[float, typer.Option(help="Grace period before the old credential is retired, seconds")]


def _options(no_approval: bool, approve_retire: bool, allow_self_approval: bool, journal: Path | None):
    from rotation.context import RotationOptions

    return RotationOptions(
        started_by=getpass.getuser(),
        approve_promote=not no_approval,
        approve_retire=approve_retire,
        allow_self_approval=allow_self_approval,
        journal=str(journal) if journal else None,
    )


def _launch(secret: str, runbook: Callable[[], dict[str, Any]], journal: str | None, yes: bool, approver: str) -> None:
    """Run ``runbook`` here, answering its approvals, and print its summary (ids and states only)."""
    summary = run_with_approvals(
        runbook, Journal(journal), open_store(secret).uri.display, yes=yes, approver=approver or getpass.getuser()
    )
    console.print_json(json.dumps(summary, default=str))


@app.command()
def jwt(
    secret: Annotated[str, typer.Argument(help="Store URI of the JWT keyset, e.g. local:///path/store.db?secret=jwt")],
    consumers_file: Consumers = None,
    reload_url: ReloadUrl = None,
    verify_url: Annotated[str | None, typer.Option(help="Endpoint that checks a bearer token")] = None,
    algorithm: Annotated[str, typer.Option(help="HS256, RS256 or ES256")] = "HS256",
    bits: Annotated[int, typer.Option(help="HS256 key length in bits (at least 256)")] = 512,
    token_lifetime: Annotated[float, typer.Option(help="Longest token lifetime, seconds")] = 3600,
    grace: Grace = 300,
    publish_first: Annotated[
        bool, typer.Option(help="Give every consumer the new key verify-only before it signs (replicated services)")
    ] = False,
    yes: Yes = False,
    no_approval: NoApproval = False,
    approve_retire: ApproveRetire = False,
    allow_self_approval: SelfApproval = False,
    approver: Approver = "",
    journal: JournalOption = None,
) -> None:
    """Rotate a JWT signing key: stage, promote, verify, wait, retire the old key."""
    from flows.jwt import JwtPolicy, rotate_jwt_signing_key
    from tasks.jwt import inspect_current_keyset

    with _clear_errors():
        policy = JwtPolicy(
            algorithm=algorithm,
            key_bits=bits,
            token_lifetime_seconds=token_lifetime,
            grace_seconds=grace,
            publish_first=publish_first,
        )
        options = _options(no_approval, approve_retire, allow_self_approval, journal)
        consumers = _consumers(consumers_file, reload_url, verify_url)
        inspect_current_keyset.fn(secret)  # bad input fails here, in one line, before a flow run starts
        _launch(
            secret,
            lambda: rotate_jwt_signing_key(secret, consumers=consumers, policy=policy, options=options),
            options.journal,
            yes,
            approver,
        )


@app.command()
def postgres(
    secret: Annotated[str, typer.Argument(help="Store URI of the application's PostgreSQL secret (AWS's JSON shape)")],
    admin_secret: Annotated[str | None, typer.Option(help="Store URI of the admin secret (default: masterarn)")] = None,
    strategy: Annotated[str, typer.Option(help="alternating-users or single-user")] = "alternating-users",
    check: Annotated[
        list[str] | None, typer.Option(help="A table or SQL statement the new login must be able to run")
    ] = None,
    retire: Annotated[str, typer.Option(help="What happens to the old login: keep, disable or drop")] = "keep",
    consumers_file: Consumers = None,
    reload_url: ReloadUrl = None,
    grace: Grace = 300,
    yes: Yes = False,
    no_approval: NoApproval = False,
    approve_retire: ApproveRetire = False,
    allow_self_approval: SelfApproval = False,
    approver: Approver = "",
    journal: JournalOption = None,
) -> None:
    """Rotate PostgreSQL credentials: alternating users (no failed login) or a single user."""
    from flows.postgres import PgPolicy, rotate_postgres_credentials
    from tasks.postgres import inspect_postgres_secret

    with _clear_errors():
        policy = PgPolicy(
            strategy=strategy, retire=retire, grace_seconds=grace, **({"privilege_checks": check} if check else {})
        )
        options = _options(no_approval, approve_retire, allow_self_approval, journal)
        consumers = _consumers(consumers_file, reload_url, None)
        inspect_postgres_secret.fn(secret, admin_secret, policy.strategy, policy.clone_suffix, policy.owner_role)
        _launch(
            secret,
            lambda: rotate_postgres_credentials(
                secret, admin_secret=admin_secret, consumers=consumers, policy=policy, options=options
            ),
            options.journal,
            yes,
            approver,
        )


@app.command()
def redis(
    secret: Annotated[str, typer.Argument(help="Store URI of the Redis credential (JSON: hosts, username, password)")],
    admin_secret: Annotated[str, typer.Option(help="Store URI of the Redis administrator's credential")],
    consumers_file: Consumers = None,
    reload_url: ReloadUrl = None,
    grace: Grace = 300,
    yes: Yes = False,
    no_approval: NoApproval = False,
    approve_retire: ApproveRetire = False,
    allow_self_approval: SelfApproval = False,
    approver: Approver = "",
    journal: JournalOption = None,
) -> None:
    """Rotate a Redis ACL password on every node: add beside the old one, move consumers, remove the old one."""
    from flows.redis import RedisPolicy, rotate_redis_password
    from tasks.redis import inspect_redis_secret

    with _clear_errors():
        policy = RedisPolicy(grace_seconds=grace)
        options = _options(no_approval, approve_retire, allow_self_approval, journal)
        consumers = _consumers(consumers_file, reload_url, None)
        inspect_redis_secret.fn(secret, admin_secret)
        _launch(
            secret,
            lambda: rotate_redis_password(secret, admin_secret, consumers=consumers, policy=policy, options=options),
            options.journal,
            yes,
            approver,
        )


@app.command()
def approve(
    run_id: Annotated[str, typer.Argument(help="A paused flow run id, or a rotation id")],
    approver: Annotated[str, typer.Option(help="Your name, recorded in the audit trail")],
    reject: Annotated[bool, typer.Option("--reject", help="Reject: the rotation is rolled back")] = False,
    reason: Annotated[str, typer.Option(help="Why; recorded in the audit trail")] = "",
    journal: JournalOption = None,
) -> None:
    """Approve (or reject) a rotation that waits for a human."""
    with _clear_errors():
        flow_run_id = run_id
        book = Journal(journal)
        with suppress(StoreError):
            flow_run_id = book.get(run_id).flow_run_id or run_id
        give_decision(
            flow_run_id, approved=not reject, approver=approver, reason=reason or ("rejected" if reject else "approved")
        )
        console.print(f"{'rejected' if reject else 'approved'} flow run {flow_run_id} as {approver}")


@app.command()
def status(
    rotation_id: Annotated[str | None, typer.Argument(help="Show the steps of this rotation")] = None,
    journal: JournalOption = None,
) -> None:
    """List rotations, or the audit trail of one."""
    with _clear_errors():
        book = Journal(journal)
        if rotation_id:
            record = book.get(rotation_id)
            console.print(f"rotation {record.id} of {record.secret} ({record.runbook}): [bold]{record.state}[/bold]")
            if record.reason:
                console.print(f"reason: {record.reason}")
            table = Table("at", "step", "status", "details")
            for step in book.steps(rotation_id):
                table.add_row(f"{step.at:%H:%M:%S}", step.step, step.status, json.dumps(step.details, default=str))
            console.print(table)
            return
        table = Table(show_lines=True)
        table.add_column("rotation", no_wrap=True, min_width=36)  # the id people paste into the next command
        table.add_column("state", no_wrap=True)
        table.add_column("started (UTC), by")
        table.add_column("runbook: secret", overflow="fold")
        for record in book.list():
            state = f"{record.state}, retired" if record.retired_at and not record.state.finished else record.state
            table.add_row(
                record.id,
                state,
                f"{record.started_at:%Y-%m-%d %H:%M} {record.started_by}",
                f"{record.runbook}: {record.secret}",
            )
        console.print(table)


@app.command()
def rollback(
    rotation_id: Annotated[str, typer.Argument(help="The rotation to undo")],
    reason: Annotated[str, typer.Option(help="Recorded in the audit trail")] = "rolled back by an operator",
    journal: JournalOption = None,
) -> None:
    """Roll back a rotation that stopped before its point of no return."""
    from flows.recovery import rollback_rotation

    with _clear_errors():
        rollback_rotation(rotation_id, journal=str(journal) if journal else None, reason=reason)
        console.print(f"rotation {rotation_id} rolled back")


@app.command()
def resume(
    rotation_id: Annotated[str, typer.Argument(help="The rotation to carry on")],
    yes: Annotated[bool, typer.Option("--yes", help="Approve every step without asking")] = False,
    approver: Annotated[str, typer.Option(help="Name recorded for --yes approvals (default: the OS user)")] = "",
    journal: JournalOption = None,
) -> None:
    """Resume a rotation whose run stopped; finished steps are not repeated."""
    from flows.recovery import resume_rotation

    with _clear_errors():
        book = Journal(journal)
        record = book.get(rotation_id)
        summary = run_with_approvals(
            lambda: resume_rotation(rotation_id, journal=str(journal) if journal else None),
            book,
            record.secret,
            yes=yes,
            approver=approver or getpass.getuser(),
        )
        console.print_json(json.dumps(summary, default=str))


@app.command()
def describe(secret: Annotated[str, typer.Argument(help="Store URI")]) -> None:
    """Versions and stages of a secret (never its value)."""
    with _clear_errors():
        description = open_store(secret).describe()
        table = Table("version", "stages", "created")
        for version in description.versions:
            table.add_row(version.version_id, ", ".join(version.stages), str(version.created_at or ""))
        console.print(table)


@app.command()
def demo(
    folder: Annotated[Path, typer.Option("--dir", help="Where the demo's store and journal go")] = Path("rotate-demo"),
    yes: Annotated[bool, typer.Option("--yes", help="Approve without asking")] = False,
    grace: Annotated[float, typer.Option(help="Token lifetime plus grace, seconds")] = 5,
) -> None:
    """The quick start: a local store, the example auth service, and a JWT rotation end to end."""
    from cli.demo import run_demo

    with _clear_errors():
        run_demo(folder.resolve(), yes=yes, wait_seconds=grace, console=console)


@app.command()
def automations(
    notify_block: Annotated[
        str | None, typer.Option(help="Id of a notification block (Slack, email...) to tell people of approvals")
    ] = None,
) -> None:
    """Install the Prefect automations of deployments/automations.py on the Prefect server in use."""
    from uuid import UUID

    from deployments.automations import install

    for name in install(UUID(notify_block) if notify_block else None):
        console.print(f"installed: {name}")
