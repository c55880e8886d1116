"""Handing a long grace period to a follow-up run, so no worker is held while it passes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from prefect.deployments import run_deployment
from prefect.runtime import deployment, flow_run
from pydantic_core import to_jsonable_python


def schedule_resume(rotation_id: str, due: datetime) -> str:
    """Schedule a run of the current deployment at ``due`` that resumes ``rotation_id``; returns its flow run id.

    The follow-up run carries the same parameters, with ``options.resume`` set, and shows in the UI as a Scheduled
    run at the due time. It survives worker restarts because it lives on the Prefect server.
    """
    parameters: dict[str, Any] = to_jsonable_python(flow_run.parameters or {})
    options = dict(parameters.get("options") or {})
    options["resume"] = rotation_id
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
