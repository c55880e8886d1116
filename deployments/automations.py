"""Prefect automations for the runbooks: stop a schedule from firing on a broken rotation, and tell people.

Installed with ``rotate automations`` or ``rotate stack up`` (idempotent: automations are replaced by name). They
react to Prefect's own flow-run state events (``prefect.flow-run.<state name>``: Paused is an approval wait, Late a
scheduled run that did not start on time) and to the audit events every rotation emits
(``secret-rotation.step.<status>``), which carry the run (and its deployment) as related resources. A rotation's
rollback is heard from its audit event, whichever way it came about: a failed verification, a rejection, a timeout,
or ``rotate rollback``.
"""

from __future__ import annotations

from uuid import UUID

from prefect import get_client
from prefect.automations import Automation, EventTrigger, PauseDeployment, SendNotification
from prefect.blocks.notifications import CustomWebhookNotificationBlock

PREFIX = "secret-rotation: "
WEBHOOK_BLOCK = "secret-rotation-notify"


def _on(event: str, step: str) -> EventTrigger:
    return EventTrigger(
        expect={event},
        match={"prefect.resource.id": "secret-rotation.rotation.*", "step": step},
        posture="Reactive",
        threshold=1,
    )


def _flow_run_in(*states: str, name: str = "*") -> EventTrigger:
    return EventTrigger(
        expect={f"prefect.flow-run.{state}" for state in states},
        match={"prefect.resource.id": "prefect.flow-run.*", "prefect.resource.name": name},
        posture="Reactive",
        threshold=1,
    )


_RUN = (
    "Flow run {{ flow_run.name }} ({{ flow_run.id }}) of {{ flow.name }}"
    "{% if deployment %}, deployment {{ deployment.name }}{% endif %}"
)
_LINK = "{% if flow_run|ui_url %} See it: {{ flow_run|ui_url }}{% endif %}"  # PREFECT_UI_URL, when set

#: (what happened, the trigger, the body): one notification automation each.
NOTIFICATIONS = (
    (
        "a run waits for approval",
        _flow_run_in("Paused"),
        _RUN + " waits for an approval. Its Resume form says what is asked; approve or reject it there, with "
        "`rotate approve`, or through the API." + _LINK,
    ),
    (
        "a rotation is rolled back",
        _on("secret-rotation.step.rolled-back", "rotation"),
        "Rotation {{ event.resource['prefect.resource.id'] }} was rolled back: {{ event.payload.reason }}."
        "{% if flow_run %} " + _RUN + "." + _LINK + "{% endif %}",
    ),
    (
        "a run fails",
        _flow_run_in("Failed", "Crashed"),
        _RUN + " is {{ flow_run.state.name }}: {{ flow_run.state.message }}." + _LINK,
    ),
    (
        "a grace period's follow-up run is late",
        _flow_run_in("Late", name="resume-*"),
        _RUN + " was due at {{ flow_run.expected_start_time }} and has not started: is a worker polling its work "
        "pool? The rotation waits, promoted, until it runs." + _LINK,
    ),
    (
        "the posture policy is broken",
        EventTrigger(
            expect={"secret-rotation.posture.broken"},
            match={"prefect.resource.id": "secret-rotation.posture"},
            posture="Reactive",
            threshold=1,
        ),
        "The secret posture report found {{ event.payload.counts.fail }} failed checks in "
        "{{ event.payload.counts.secrets }} secrets: see the secret-posture artifacts of the run.",
    ),
)


def rotation_automations(notify_block_id: UUID | None = None) -> list[Automation]:
    """The automations to install; with a notification block, people also hear of approvals, rollbacks, failures,
    late follow-up runs and a broken posture policy."""
    automations = [
        Automation(
            name=PREFIX + "pause the deployment when a rollback fails",
            description="A rollback that stopped half-way needs a person: no new rotation may start on top of it.",
            trigger=_on("secret-rotation.step.failed", "undo:*"),
            actions=[PauseDeployment(source="inferred")],
        ),
    ]
    if notify_block_id is not None:
        automations += [
            Automation(
                name=PREFIX + f"notify when {what}",
                trigger=trigger,
                actions=[
                    SendNotification(block_document_id=notify_block_id, subject=f"secret rotation: {what}", body=body)
                ],
            )
            for what, trigger, body in NOTIFICATIONS
        ]
    return automations


def webhook_block(url: str) -> UUID:
    """Save (or replace) the notification block that POSTs each notification to ``url`` as JSON (``subject``,
    ``body``); returns its id for :func:`install`."""
    block = CustomWebhookNotificationBlock(
        name="secret-rotation", url=url, method="POST", json_data={"subject": "{{subject}}", "body": "{{body}}"}
    )
    return block.save(WEBHOOK_BLOCK, overwrite=True)


def install(notify_block_id: UUID | None = None) -> list[str]:
    """Create the automations, replacing every one installed before (named with PREFIX); returns their names."""
    installed = []
    with get_client(sync_client=True) as client:
        for existing in client.read_automations():
            if existing.name.startswith(PREFIX):
                client.delete_automation(existing.id)
        for automation in rotation_automations(notify_block_id):
            automation.create()
            installed.append(automation.name)
    return installed
