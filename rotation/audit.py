"""The audit trail: every step of a rotation is a journal record, written in the same transaction as the step
itself; what people and automations act on is also a Prefect event (``secret-rotation.step.*``: a rotation started,
resumed, completed, failed or rolled back; an approval waiting, given, refused or rejected). Ids and names only.

Routine step records stay in the journal alone: each event is a write on the Prefect server, and a rotation's floor
is Prefect's per-run cost, not its own bookkeeping.
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
