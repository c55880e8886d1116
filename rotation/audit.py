"""The audit trail: every step of a rotation as a journal record and a Prefect event, ids and names only.

The journal writes a step's records in the same transaction as the step itself; :func:`emit` then tells Prefect
(automations listen for ``secret-rotation.step.*``). :func:`record` is for records that stand alone (an approval
refused, a run waiting).
"""

from __future__ import annotations

from typing import Any

from prefect.events import emit_event

from rotation.journal import Journal


def emit(rotation_id: str, secret: str, step: str, status: str, **details: Any) -> None:
    """Tell Prefect about one step of a rotation. ``details`` must hold no secret value."""
    emit_event(
        event=f"secret-rotation.step.{status}",
        resource={"prefect.resource.id": f"secret-rotation.rotation.{rotation_id}", "step": step},
        related=[{"prefect.resource.id": f"secret-rotation.secret.{secret}", "prefect.resource.role": "secret"}],
        payload=details,
    )


def record(journal: Journal, rotation_id: str, secret: str, step: str, status: str, **details: Any) -> None:
    """Record one event of a rotation in the journal and tell Prefect."""
    journal.record(rotation_id, step, status, **details)
    emit(rotation_id, secret, step, status, **details)
