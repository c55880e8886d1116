"""Running a runbook in this process and answering its approvals at the terminal, for that run alone.

The run's approvals reach this terminal through :func:`rotation.approval.watching`, which only hears runs of this
process: a second ``rotate`` command never sees (or answers) another command's rotation. ``--yes`` is not handled
here: it is a decision given in advance (``RotationOptions.preapproved``), so such a run never pauses.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import typer
from prefect.context import refresh_global_settings_context
from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
from rich.console import Console
from rich.markup import escape

from cli import temporary_server
from errors import PermissionDenied, Refused, Unreachable
from rotation.approval import ApprovalDecision, PendingApproval, give_decision, watching
from rotation.journal import Journal


def prefect_reachable(waiting: str | None = None) -> None:
    """Check the Prefect server the command will use, in one line if it cannot work, before anything starts.

    A command that runs a flow here with no server to use has started its temporary one: this waits until it
    answers. Any other command without ``PREFECT_API_URL`` has no server to reach: ``waiting`` says what the command
    needs another process's server for.
    """
    from prefect import get_client
    from prefect.exceptions import PrefectHTTPStatusError
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL

    temporary_server.wait()
    url = PREFECT_API_URL.value()
    if not url:
        if waiting:
            raise Refused(
                f"PREFECT_API_URL is not set, so there is no Prefect server to reach, and {waiting}: set "
                "PREFECT_API_URL to that server (a run started by `rotate` without one is answered at its terminal)"
            )
        return
    try:
        with get_client(sync_client=True) as client:
            client.api_version()
    except PrefectHTTPStatusError as exc:
        if exc.response.status_code not in (401, 403):
            raise Unreachable(f"the Prefect server at {url} answered {exc.response.status_code}") from None
        given = "is not set" if not PREFECT_API_AUTH_STRING.value() else "does not match the server's"
        raise PermissionDenied(
            f"the Prefect server at {url} refused this command: PREFECT_API_AUTH_STRING {given}; set it to the "
            "server's PREFECT_SERVER_API_AUTH_STRING"
        ) from None
    except httpx.HTTPError as exc:
        raise Unreachable(
            f"no Prefect server answers at PREFECT_API_URL={url} ({type(exc).__name__}): start it, or unset "
            "PREFECT_API_URL to run with a temporary one"
        ) from None


def use_local_stack(ctx: typer.Context) -> None:
    """Where runs go: the Prefect server the environment or profile names (PREFECT_API_URL); without one, the local
    stack's server when it answers (``rotate stack up``); else a temporary server of this command, started now for
    the commands that run a flow (see :mod:`cli.temporary_server`)."""
    if PREFECT_API_URL.value():
        temporary_server.stop()  # launched early (cli.main), but a profile names a server
        return
    from cli.stack import running_server

    stack = running_server()
    if stack is not None:
        temporary_server.stop()
        os.environ.update(PREFECT_API_URL=stack.api_url, PREFECT_API_AUTH_STRING=stack.auth_string)
        refresh_global_settings_context()  # every thread (approvals are answered from one) reads the global settings
    elif ctx.invoked_subcommand in temporary_server.RUNS_FLOWS_HERE:
        temporary_server.start()
    else:
        temporary_server.stop()


def run_here(run: Callable[[], Any], journal: Journal, console: Console) -> Any:
    """Run ``run`` (a runbook flow call) in a thread; ask its approvals at the terminal when there is one, else say
    how to give them (the Prefect UI, ``rotate approve``, the API) and wait."""
    prefect_reachable()
    return _run(run, journal, console)


def _run(run: Callable[[], Any], journal: Journal, console: Console) -> Any:
    interactive = sys.stdin is not None and sys.stdin.isatty()
    pending: queue.Queue[PendingApproval] = queue.Queue()
    outcome: dict[str, Any] = {}

    def target() -> None:
        # No Prefect heartbeats for a run that lives in this command: the journal's lease is what tells a crashed
        # run here, and ending a heartbeat thread costs up to a second. Deployments' runs keep theirs (a worker
        # runs them, and Prefect's zombie detection reads them).
        try:
            with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
                outcome["result"] = run()
        except BaseException as exc:
            outcome["error"] = exc

    with watching(pending.put):
        worker = threading.Thread(target=target, name="runbook", daemon=True)
        worker.start()
        while worker.is_alive():
            try:
                waiting = pending.get(timeout=0.2)
            except queue.Empty:
                continue
            if interactive:
                _ask(waiting, journal, console)
            else:
                console.print(
                    f"[cyan]waiting for approval[/cyan] {escape(waiting.question)}\n"
                    f"  approve in the Prefect UI, or: {_temporary_server()}rotate approve {waiting.rotation_id} "
                    "--approver NAME --reason TEXT [--reject]"
                )
        worker.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("result")


def _temporary_server() -> str:
    """``PREFECT_API_URL=... `` for another command to reach this command's temporary Prefect server, if it runs one."""
    url = temporary_server.api_url()
    return f"PREFECT_API_URL={url} " if url else ""


def _ask(waiting: PendingApproval, journal: Journal, console: Console) -> None:
    # No default: pressing Enter decides nothing, as in the UI's form.
    console.print(escape(waiting.question))
    choice = _answer("approve or reject", lambda text: text.strip().lower() in ("approve", "reject")).strip().lower()
    approver = _answer("Your name", str.strip)
    reason = _answer("Reason", str.strip)
    decision = ApprovalDecision(
        decision=choice,
        approver=approver,
        reason=reason,
        rotation_id=waiting.rotation_id,
        step=waiting.step,
        decision_id=str(uuid.uuid4()),
    )
    give_decision(waiting.flow_run_id, decision)
    try:
        console.print(escape(verdict(journal, decision, timeout=60)))
    except Refused as exc:  # the run asks again, saying why
        console.print(f"[red]refused:[/red] {escape(str(exc))}")


def _answer(label: str, valid: Callable[[str], Any]) -> str:
    while not valid(answer := typer.prompt(label)):
        typer.echo(f"{label}: {answer.strip() or 'a blank answer'} will not do.")
    return answer


def verdict(journal: Journal, decision: ApprovalDecision, timeout: float) -> str:
    """What the run made of ``decision`` (accepted, rejected, or refused and why), read back from the journal."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in journal.events(decision.rotation_id):
            if event.details.get("decision_id") != decision.decision_id:
                continue
            if event.status == "refused":
                raise Refused(f"the run refused the decision of {decision.approver}: {event.details.get('reason')}")
            return f"{event.status}: {decision.step} of rotation {decision.rotation_id}, by {decision.approver}"
        time.sleep(0.2)
    raise Refused(
        f"the run has not acted on the decision within {timeout:.0f} s; `rotate status {decision.rotation_id}` "
        "shows where it is"
    )
