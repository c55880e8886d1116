"""The rotation's flow runs on the Prefect server: a follow-up run for a long grace period, and the runs a resume
or a rollback supersedes."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from prefect import get_client
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.runtime import deployment, flow_run
from prefect.states import Cancelled, Crashed
from pydantic_core import to_jsonable_python


def schedule_follow_up(rotation_id: str, due: datetime) -> str:
    """Schedule a run of the current deployment at ``due`` that resumes ``rotation_id``; returns its flow run id.

    The follow-up run carries the same parameters, with ``options.resume`` set, no approval given in advance and
    ``automatic`` as who resumes it (for the audit trail), and shows in the UI as a Scheduled run at the due time.
    It survives worker restarts because it lives on the Prefect server.
    """
    parameters: dict[str, Any] = to_jsonable_python(flow_run.parameters or {})
    options = dict(parameters.get("options") or {})
    options.update(resume=rotation_id, resumed_by="automatic", preapproved=None)
    parameters["options"] = options
    follow_up = run_deployment(
        name=deployment.id,
        parameters=parameters,
        scheduled_time=due,
        timeout=0,
        as_subflow=False,
        flow_run_name=f"resume-{rotation_id[:8]}-after-grace",
    )
    return str(follow_up.id)


def mark_superseded(stale_id: str | None, by: str) -> None:
    """Mark the run a resume or rollback took the rotation from as Crashed, if Prefect still shows it alive.

    A run killed without warning stays Running or Paused on the server forever; left so, the UI would still offer
    its approval. Only called once its lease has expired (the journal refuses a take-over before).
    """
    if not stale_id or stale_id == str(flow_run.id):
        return
    with get_client(sync_client=True) as client:
        try:
            stale = client.read_flow_run(UUID(stale_id))
        except ObjectNotFound:
            return
        if stale.state is not None and not stale.state.is_final():
            client.set_flow_run_state(stale.id, Crashed(message=f"superseded: {by}"), force=True)


def cancel_scheduled(follow_up_id: str, why: str) -> None:
    """Cancel a follow-up run that has not started (its rotation was rolled back meanwhile)."""
    with get_client(sync_client=True) as client:
        try:
            run = client.read_flow_run(UUID(follow_up_id))
        except ObjectNotFound:
            return
        if run.state is not None and run.state.is_scheduled():
            client.set_flow_run_state(run.id, Cancelled(message=why), force=True)
