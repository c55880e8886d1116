"""The audit trail: every step of a rotation as a journal entry and a Prefect event, ids and fingerprints only."""

from __future__ import annotations

from typing import Any

from prefect.events import emit_event

from rotation.journal import Journal


def audit(journal: Journal, rotation_id: str, secret: str, step: str, status: str, **details: Any) -> None:
    """Record one step of a rotation. ``details`` must hold no secret value: ids, names, fingerprints."""
    journal.record_step(rotation_id, step, status, details)
    emit_event(
        event=f"secret-rotation.step.{status}",
        resource={"prefect.resource.id": f"secret-rotation.rotation.{rotation_id}", "step": step},
        related=[{"prefect.resource.id": f"secret-rotation.secret.{secret}", "prefect.resource.role": "secret"}],
        payload=details,
    )
