"""``rotate``: run, approve, inspect, resume and roll back rotations from a terminal."""

from __future__ import annotations

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no network here for telemetry

import getpass
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from cli import backup, posture, saml, smtp, stack
from cli.output import clear_errors, console
from cli.rotating import (
    Approver,
    ApproveRetire,
    Consumers,
    Grace,
    JournalOption,
    NoApproval,
    ReloadUrl,
    SelfApproval,
    Yes,
    consumers_from,
    launch,
    preapproval,
    rotation_options,
)
from cli.terminal import prefect_reachable, run_here, use_local_stack, verdict
from errors import BadInput, Refused
from rotation.approval import ApprovalDecision, give_decision, waiting_for
from rotation.journal import Journal, RotationRecord, RotationState
from rotation.settings import settings
from stores import open_store

app = typer.Typer(no_args_is_help=True, help="Secret-rotation runbooks on Prefect.", pretty_exceptions_enable=False)


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

    with clear_errors():
        policy = JwtPolicy(
            algorithm=algorithm,
            key_bits=bits,
            token_lifetime_seconds=token_lifetime,
            grace_seconds=grace,
            publish_first=publish_first,
        )
        open_store(secret)  # a malformed store URI is one line here, before Prefect starts
        consumers = consumers_from(consumers_file, reload_url, verify_url)
        options = rotation_options(no_approval, approve_retire, allow_self_approval, journal, yes, approver)
        launch(
            secret,
            lambda: rotate_jwt_signing_key(secret, consumers=consumers, policy=policy, options=options),
            options.journal,
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

    with clear_errors():
        policy = PgPolicy(
            strategy=strategy, retire=retire, grace_seconds=grace, **({"privilege_checks": check} if check else {})
        )
        open_store(secret)  # a malformed store URI is one line here, before Prefect starts
        consumers = consumers_from(consumers_file, reload_url, None)
        options = rotation_options(no_approval, approve_retire, allow_self_approval, journal, yes, approver)
        launch(
            secret,
            lambda: rotate_postgres_credentials(
                secret, admin_secret=admin_secret, consumers=consumers, policy=policy, options=options
            ),
            options.journal,
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
    from flows.redis_password import RedisPolicy, rotate_redis_password

    with clear_errors():
        policy = RedisPolicy(grace_seconds=grace)
        open_store(secret)  # a malformed store URI is one line here, before Prefect starts
        consumers = consumers_from(consumers_file, reload_url, None)
        options = rotation_options(no_approval, approve_retire, allow_self_approval, journal, yes, approver)
        launch(
            secret,
            lambda: rotate_redis_password(secret, admin_secret, consumers=consumers, policy=policy, options=options),
            options.journal,
        )


def _not_blank(option: str, value: str, what: str) -> None:
    if not value.strip():
        raise BadInput(f"{option} is blank: give {what}; it is recorded in the audit trail")


def _rotation(book: Journal, rotation_or_run_id: str) -> RotationRecord:
    """The rotation named by its id, or by the id of a flow run that owns it."""
    for record in book.list():
        if rotation_or_run_id in (record.id, record.flow_run_id):
            return record
    return book.get(rotation_or_run_id)  # raises, naming the journal


def _status(book: Journal, record: RotationRecord) -> str:
    """A rotation's state as a person reads it: a live run waiting for approval says so."""
    if record.state.finished:
        return str(record.state)
    if not record.lease_live():
        if record.state is RotationState.WAITING:
            return "waiting"
        if not record.run_gone(settings().lease_seconds):
            # A run on a busy machine renews late and goes on: "stopped" would be a guess.
            return (
                f"{record.state}, its run's lease expired at {record.lease_expires_at:%H:%M:%S} UTC: it has stopped, "
                "or is too slow to renew it"
            )
        return f"{record.state}, its run has stopped"
    waiting = waiting_for(book, record.id, record.flow_run_id)
    if waiting is not None:
        return f"waiting for approval ({waiting.step}) in flow run {record.flow_run_id}"
    return f"{record.state}{', retired' if record.retired_at else ''}"


@app.command()
def approve(
    rotation_id: Annotated[str, typer.Argument(help="The rotation (or its paused flow run) to decide")],
    approver: Annotated[str, typer.Option(help="Your name, recorded in the audit trail")],
    reason: Annotated[str, typer.Option(help="Why; recorded in the audit trail")],
    reject: Annotated[bool, typer.Option("--reject", help="Reject: the rotation is rolled back")] = False,
    journal: JournalOption = None,
) -> None:
    """Approve (or reject) the step a rotation waits at; exits non-zero if the run refuses the decision."""
    import uuid

    with clear_errors():
        _not_blank("--approver", approver, "your name")
        _not_blank("--reason", reason, "why you decide so")
        book = Journal(journal, create=False)
        record = _rotation(book, rotation_id)
        waiting = waiting_for(book, record.id, record.flow_run_id) if record.lease_live() else None
        if waiting is None:
            raise Refused(f"rotation {record.id} is not waiting for an approval ({_status(book, record)})")
        decision = ApprovalDecision(
            decision="reject" if reject else "approve",
            approver=approver,
            reason=reason,
            rotation_id=record.id,
            step=waiting.step,
            decision_id=str(uuid.uuid4()),
        )
        prefect_reachable(f"the run of rotation {record.id} waits on it")
        give_decision(waiting.flow_run_id, decision)
        console.print(escape(verdict(book, decision, timeout=120)))


@app.command()
def status(
    rotation_id: Annotated[str | None, typer.Argument(help="Show the audit trail of this rotation")] = None,
    journal: JournalOption = None,
) -> None:
    """List rotations, or the audit trail of one."""
    with clear_errors():
        book = Journal(journal, create=False)
        record = book.get(rotation_id) if rotation_id else None  # an unknown id is one line, naming the journal
        console.print(f"journal: {escape(book.display)}")
        if record is not None:
            console.print(
                f"rotation {record.id} of {escape(record.secret)} ({record.runbook}): "
                f"[bold]{escape(_status(book, record))}[/bold]"
            )
            if record.reason:
                console.print(f"reason: {escape(record.reason)}")
            table = Table("at", "step", "status", "details")
            for event in book.events(record.id):
                table.add_row(
                    f"{event.at:%H:%M:%S}", escape(event.step), event.status, escape(json.dumps(event.details))
                )
            console.print(table)
            return
        table = Table(show_lines=True)
        table.add_column("rotation", no_wrap=True, min_width=36)  # the id people paste into the next command
        table.add_column("state")
        table.add_column("started (UTC), by")
        table.add_column("runbook: secret", overflow="fold")
        for record in book.list():
            table.add_row(
                record.id,
                escape(_status(book, record)),
                f"{record.started_at:%Y-%m-%d %H:%M} {escape(record.started_by)}",
                escape(f"{record.runbook}: {record.secret}"),
            )
        console.print(table)


def _stopped(book: Journal, rotation_id: str, purpose: str) -> RotationRecord:
    """The rotation, if ``purpose`` ("resume", "rollback") can apply to it: said in one line before Prefect starts."""
    record = book.get(rotation_id)
    if record.state.finished:
        advice = "start a new rotation instead" if purpose == "resume" else "there is nothing to undo"
        raise Refused(f"rotation {rotation_id} of {record.secret} is already {record.state}; {advice}")
    if purpose == "resume" and record.state is RotationState.ROLLBACK_FAILED:
        raise Refused(
            f"rotation {rotation_id} of {record.secret} stopped half-way through its rollback; it cannot go forward: "
            f"fix the cause ({record.reason}) and run `rotate rollback {rotation_id}` again"
        )
    if purpose == "rollback" and record.retired_at is not None:
        raise Refused(
            f"rotation {rotation_id} of {record.secret} passed its point of no return (the old credential was "
            f"retired); it can only go forward: `rotate resume {rotation_id}`"
        )
    if record.lease_live():
        raise Refused(
            f"rotation {rotation_id} of {record.secret} is still run by flow run {record.flow_run_id}; wait for it, "
            f"or cancel that run, then {purpose} again"
        )
    return record


@app.command()
def rollback(
    rotation_id: Annotated[str, typer.Argument(help="The rotation to undo")],
    reason: Annotated[str, typer.Option(help="Recorded in the audit trail")] = "rolled back by an operator",
    journal: JournalOption = None,
) -> None:
    """Roll back a rotation whose run stopped before its point of no return."""
    with clear_errors():
        book = Journal(journal, create=False)
        _stopped(book, rotation_id, "rollback")
        from flows.recovery import rollback_rotation

        operator = getpass.getuser()
        run_here(lambda: rollback_rotation(rotation_id, operator, journal=book.location, reason=reason), book, console)
        console.print(f"rotation {rotation_id} rolled back")


@app.command()
def resume(
    rotation_id: Annotated[str, typer.Argument(help="The rotation to carry on")],
    yes: Yes = False,
    approver: Approver = "",
    journal: JournalOption = None,
) -> None:
    """Resume a rotation whose run stopped; completed steps are not repeated."""
    with clear_errors():
        book = Journal(journal, create=False)
        record = _stopped(book, rotation_id, "resume")
        allow_self = bool((record.parameters.get("options") or {}).get("allow_self_approval"))
        preapproved = preapproval(yes, approver, record.started_by, allow_self)
        from flows.recovery import resume_rotation

        operator = getpass.getuser()
        summary = run_here(
            lambda: resume_rotation(rotation_id, operator, journal=book.location, preapproved=preapproved),
            book,
            console,
        )
        console.print_json(json.dumps(summary, default=str))


def _entered_value(from_file: Path | None) -> str:
    """The value a person gives: a file, else standard input; at a terminal a prompt that does not echo."""
    if from_file is not None:
        try:
            text = from_file.read_text()
        except OSError as exc:
            raise BadInput(f"--from-file {from_file}: cannot read it ({exc.strerror})") from None
    elif sys.stdin.isatty():
        text = getpass.getpass("Value (not shown): ")
        if getpass.getpass("Again, to be sure: ") != text:
            raise BadInput("the two entries differ; nothing was staged: run the command again")
    else:
        text = sys.stdin.read()
    value = text.removesuffix("\n")
    if not value.strip():
        raise BadInput("the value is empty; nothing was staged")
    return value


@app.command()
def stage(
    rotation_id: Annotated[str, typer.Argument(help="The rotation that waits for a value")],
    from_file: Annotated[
        Path | None, typer.Option(help="Read the value from this file (a certificate, say) instead of a prompt")
    ] = None,
    person: Annotated[str, typer.Option(help="Your name, recorded in the audit trail (default: the OS user)")] = "",
    journal: JournalOption = None,
) -> None:
    """Give a rotation the value it waits for (a password set at a provider, a signed certificate).

    The value is read from a prompt that does not echo, from standard input, or from --from-file: never from the
    command line, so it stays out of shell history and process lists.
    """
    import flows.recovery  # noqa: F401 - registers every runbook, whose input functions build the value
    from rotation.staging import stage_value

    with clear_errors():
        book = Journal(journal, create=False)
        book.get(rotation_id)  # an unknown rotation is said before anything is read
        staged = stage_value(book, rotation_id, _entered_value(from_file), person or getpass.getuser())
        console.print(f"staged {staged.fingerprint} for rotation {rotation_id}")
        if staged.decision is not None:
            console.print(escape(verdict(book, staged.decision, timeout=120)))
        elif staged.taken:
            console.print("its run found the value staged and went on")
        else:
            console.print(f"its run has stopped; carry it on with: rotate resume {rotation_id}")


@app.command()
def describe(secret: Annotated[str, typer.Argument(help="Store URI")]) -> None:
    """Versions and stages of a secret (never its value)."""
    with clear_errors():
        description = open_store(secret).describe()
        table = Table("version", "stages", "created")
        for version in description.versions:
            table.add_row(escape(version.version_id), ", ".join(version.stages), str(version.created_at or ""))
        console.print(table)


@app.command()
def demo(
    folder: Annotated[Path, typer.Option("--dir", help="Where the demo's store and journal go")] = Path("rotate-demo"),
    yes: Annotated[bool, typer.Option("--yes", help="Approve without asking")] = False,
    grace: Annotated[float, typer.Option(help="Token lifetime plus grace, seconds")] = 5,
) -> None:
    """The quick start: a local store, the example auth service, and a JWT rotation end to end."""
    from cli.demo import run_demo

    with clear_errors():
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


app.command()(backup.backup)
app.command()(backup.drill)
app.command()(backup.restore)
app.command()(posture.posture)
app.command()(posture.audit)
app.command()(saml.saml)
app.command()(smtp.smtp)
app.add_typer(stack.app, name="stack")
# Where runs go: the server PREFECT_API_URL names, else the local stack's when it runs, else a temporary one.
app.callback()(use_local_stack)
