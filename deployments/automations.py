"""Prefect automations for the runbooks: stop a schedule from firing on a broken rotation, and tell people.

Installed with ``rotate automations`` (idempotent: automations are replaced by name). They react to the audit events
every rotation emits (``secret-rotation.step.<status>``), which carry the run's deployment as a related resource.
"""

from __future__ import annotations

from uuid import UUID

from prefect import get_client
from prefect.automations import Automation, EventTrigger, PauseDeployment, SendNotification

PREFIX = "secret-rotation: "


def _on(event: str, step: str) -> EventTrigger:
    return EventTrigger(
        expect={event},
        match={"prefect.resource.id": "secret-rotation.rotation.*", "step": step},
        posture="Reactive",
        threshold=1,
    )


def rotation_automations(notify_block_id: UUID | None = None) -> list[Automation]:
    """The automations to install; with a notification block, people also hear of approvals and failures."""
    automations = [
        Automation(
            name=PREFIX + "pause the deployment when a rollback fails",
            description="A rollback that stopped half-way needs a person: no new rotation may start on top of it.",
            trigger=_on("secret-rotation.step.failed", "undo:*"),
            actions=[PauseDeployment(source="inferred")],
        ),
    ]
    if notify_block_id is not None:
        body = (
            "Rotation {{ event.resource.id }} of {{ event.related[0].id }}: step {{ event.resource.step }} "
            "is {{ event.event }}. {{ event.payload.question or event.payload.error or '' }}"
        )
        for status, step, what in (
            ("waiting", "*:approve", "waits for an approval"),
            ("failed", "*", "failed"),
            ("rolled-back", "rotation", "was rolled back"),
        ):
            automations.append(
                Automation(
                    name=PREFIX + f"notify when a rotation {what}",
                    trigger=_on(f"secret-rotation.step.{status}", step),
                    actions=[
                        SendNotification(block_document_id=notify_block_id, subject=f"rotation {what}", body=body)
                    ],
                )
            )
        automations.append(
            Automation(
                name=PREFIX + "notify when the posture policy is broken",
                description="The posture report found a secret rotated too late, weak, reused, unbacked or stuck.",
                trigger=EventTrigger(
                    expect={"secret-rotation.posture.broken"},
                    match={"prefect.resource.id": "secret-rotation.posture"},
                    posture="Reactive",
                    threshold=1,
                ),
                actions=[
                    SendNotification(
                        block_document_id=notify_block_id,
                        subject="secret posture: policy broken",
                        body="The secret posture report found {{ event.payload.counts.fail }} failed checks in "
                        "{{ event.payload.counts.secrets }} secrets: see the secret-posture artifacts of the run.",
                    )
                ],
            )
        )
    return automations


def install(notify_block_id: UUID | None = None) -> list[str]:
    """Create the automations, replacing any of the same name; returns their names."""
    installed = []
    with get_client(sync_client=True) as client:
        for automation in rotation_automations(notify_block_id):
            for existing in client.read_automations_by_name(name=automation.name):
                client.delete_automation(existing.id)
            automation.create()
            installed.append(automation.name)
    return installed
