"""The compensation stack: each step that changes something registers its undo before it runs; a failure before the
point of no return runs the undos newest first, as visible tasks, then restarts the consumers.

An undo is a task object with its own non-secret arguments (:class:`Undo`); the core supplies what every undo needs,
the secret and the rotation id. The stack lives in the journal, so a later run (``rotate rollback``) can undo a
crashed one.
"""

from __future__ import annotations

from typing import Any

from prefect import Task
from prefect.runtime import flow_run
from pydantic_core import to_jsonable_python

from errors import RotationError
from redaction import redact
from rotation import audit, flow_runs
from rotation.execution import call
from rotation.journal import Journal, Lease, RotationRecord, RotationState
from rotation.lease import kept
from rotation.runbooks import named


class Undo:
    """``Undo(task, **kwargs)``: run ``task(secret, rotation_id, **kwargs)`` to undo a step. Arguments are names,
    ids and flags, never values: an undo re-derives what it restores from the store's versions."""

    def __init__(self, task: Task[..., Any], /, **kwargs: Any) -> None:
        self.task = task
        self.kwargs = to_jsonable_python(kwargs)

    def __repr__(self) -> str:
        return f"Undo({self.task.name}, {self.kwargs})"


class RollbackFailed(RotationError):
    """An undo step failed; the rotation keeps its lock until ``rotate rollback`` succeeds."""


def roll_back(journal: Journal, lease: Lease, record: RotationRecord, reason: str, inline: bool = False) -> None:
    """Run the rotation's pending undo steps, newest first, then the deferred ones (consumer restarts).

    Safe to call again after a failure or a crash: undo steps that finished are not run twice, and every undo is
    itself idempotent. ``inline``: the undos run as plain calls, as the rotation's steps did (a fleet's member).
    """
    book = named(record.runbook)
    for undo in journal.undos(record.id):
        if undo.done:
            continue
        task = book.undo(undo.task)
        try:
            call(task, record.secret, record.id, inline=inline, **undo.kwargs)
        except Exception as exc:
            why = redact(f"undo of step {undo.step!r} ({undo.task}) failed: {type(exc).__name__}: {exc}")
            audit.record(journal, record.id, record.secret, f"undo:{undo.step}", "failed", error=why)
            journal.end_run(lease, RotationState.ROLLBACK_FAILED, why)
            raise RollbackFailed(
                f"rollback of rotation {record.id} stopped: {why}. Fix the cause and run "
                f"`rotate rollback {record.id}` again; the steps already undone will not run twice"
            ) from exc
        journal.mark_undone(lease, undo.step)
    journal.end_run(lease, RotationState.ROLLED_BACK, reason)
    audit.emit(record.id, record.secret, "rotation", "rolled-back", reason=reason)


def roll_back_stopped(journal: Journal, rotation_id: str, reason: str, operator: str) -> RotationRecord:
    """Take over a rotation whose run stopped (its lease expired) and roll it back, as ``operator`` asked; refused
    while its run lives."""
    lease = Lease.new(rotation_id, str(flow_run.id) if flow_run.id else None)
    taken = journal.take_over(rotation_id, lease, "rollback", operator)
    flow_runs.mark_superseded(taken.superseded, f"its rotation was rolled back by flow run {flow_run.id}")
    for event in journal.events(rotation_id):
        if event.status == "deferred":
            flow_runs.cancel_scheduled(event.details["follow_up_flow_run"], f"rotation {rotation_id} was rolled back")
    with kept(journal, lease):
        roll_back(journal, lease, taken.record, reason)
    return journal.get(rotation_id)
