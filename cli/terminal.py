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

import typer
from prefect.context import refresh_global_settings_context
from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
from rich.console import Console
from rich.markup import escape

from errors import Refused
from rotation.approval import ApprovalDecision, PendingApproval, give_decision, watching
from rotation.journal import Journal


def use_local_stack() -> None:
    """Where runs go: the Prefect server the environment or profile names (PREFECT_API_URL); without one, the local
    stack's server when it answers (``rotate stack up``); else Prefect's temporary server, started per command."""
    if PREFECT_API_URL.value():
        return
    from cli.stack import running_server

    stack = running_server()
    if stack is not None:
        os.environ.update(PREFECT_API_URL=stack.api_url, PREFECT_API_AUTH_STRING=stack.auth_string)
        refresh_global_settings_context()  # every thread (approvals are answered from one) reads the global settings


def run_here(run: Callable[[], Any], journal: Journal, console: Console) -> Any:
    """Run ``run`` (a runbook flow call) in a thread; ask its approvals at the terminal when there is one, else say
    how to give them (the Prefect UI, ``rotate approve``, the API) and wait."""
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
                    f"  approve in the Prefect UI, or: rotate approve {waiting.rotation_id} --approver NAME "
                    "--reason TEXT [--reject]"
                )
        worker.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("result")


def _ask(waiting: PendingApproval, journal: Journal, console: Console) -> None:
    approved = typer.confirm(waiting.question, default=False)
    approver = typer.prompt("Your name")
    reason = typer.prompt("Reason", default="approved at the terminal" if approved else "rejected at the terminal")
    decision = ApprovalDecision(
        decision="approve" if approved else "reject",
        approver=approver,
        reason=reason,
        rotation_id=waiting.rotation_id,
        step=waiting.step,
        decision_id=str(uuid.uuid4()),
    )
    _send(waiting.flow_run_id, decision)
    try:
        console.print(escape(verdict(journal, decision, timeout=60)))
    except Refused as exc:  # the run asks again, saying why
        console.print(f"[red]refused:[/red] {escape(str(exc))}")


def _send(flow_run_id: str, decision: ApprovalDecision) -> None:
    # The journal says "waiting" a moment before the server has the run paused.
    for _ in range(40):
        try:
            give_decision(flow_run_id, decision)
            return
        except Refused:
            time.sleep(0.25)
    give_decision(flow_run_id, decision)


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
