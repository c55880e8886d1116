"""Answering a runbook's approvals at the terminal while it runs in this process."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console

from rotation.approval import NotWaitingForApproval, give_decision
from rotation.journal import Journal

console = Console()


def _pending_approval(journal: Journal, secret: str) -> tuple[str, str, str] | None:
    """(flow run id, step, question) of the approval the active rotation of ``secret`` waits for, if any."""
    for record in journal.list(active_only=True):
        if record.secret != secret or not record.flow_run_id:
            continue
        steps = journal.steps(record.id)
        if steps and steps[-1].status == "waiting" and steps[-1].step.endswith(":approve"):
            return record.flow_run_id, f"{record.id}/{steps[-1].step}", steps[-1].details.get("question", "")
    return None


def run_with_approvals(run: Callable[[], Any], journal: Journal, secret: str, *, yes: bool, approver: str) -> Any:
    """Run a runbook in a thread and answer its approvals here: ``--yes`` approves, a terminal asks; without
    either (no terminal on standard input) the run waits for an approval from the UI, the API or ``rotate approve``.
    """
    interactive = sys.stdin is not None and sys.stdin.isatty()
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = run()
        except BaseException as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=target, name="runbook", daemon=True)
    worker.start()
    answered: set[str] = set()
    while worker.is_alive():
        worker.join(0.5)
        pending = _pending_approval(journal, secret)
        if pending is None or pending[1] in answered:
            continue
        flow_run_id, step, question = pending
        answered.add(step)
        if not yes and not interactive:
            console.print(
                f"[cyan]waiting for approval[/cyan] {question}\n"
                f"  rotate approve {flow_run_id} --approver NAME [--reject] --reason TEXT  (or in the Prefect UI)"
            )
            continue
        if yes:
            console.print(f"[cyan]approval[/cyan] {question} -> approved by {approver} (--yes)")
            decision = {"approved": True, "approver": approver, "reason": "approved with --yes"}
        else:
            approved = typer.confirm(f"{question}", default=False)
            name = typer.prompt("Your name", default=approver)
            reason = typer.prompt("Reason", default="approved at the terminal" if approved else "rejected")
            decision = {"approved": approved, "approver": name, "reason": reason}
        for _ in range(40):  # the journal can say "waiting" a moment before the server has the run paused
            try:
                give_decision(flow_run_id, **decision)
                break
            except NotWaitingForApproval:
                time.sleep(0.25)
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("result")
