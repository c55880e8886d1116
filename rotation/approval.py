"""Human approval: the flow run pauses until someone approves or rejects, in the UI, the CLI or the API.

The decision model has no defaults, so an empty resume is refused by the server and the run stays paused.
Approver names are declared by the person approving; who may approve at all is decided by who can reach the
Prefect API (turn API authentication on in production).
"""

from __future__ import annotations

import re
import time
from uuid import UUID

from prefect import get_run_logger
from prefect.exceptions import FlowPauseTimeout, NotPausedError
from prefect.flow_runs import pause_flow_run, resume_flow_run
from prefect.input import RunInput
from pydantic import Field

from errors import RotationError


class ApprovalDecision(RunInput):
    """What an approver answers. Every field is required."""

    approved: bool = Field(description="true to go ahead, false to reject (the rotation is rolled back)")
    approver: str = Field(min_length=1, description="who decides")
    reason: str = Field(description="why; recorded in the audit trail")


class ApprovalRejected(RotationError):
    """The approver said no, or nobody answered in time."""


def request_approval(
    question: str,
    *,
    key: str,
    started_by: str,
    timeout_seconds: float,
    allow_self_approval: bool,
    poll_seconds: int = 2,
) -> ApprovalDecision:
    """Pause the current flow run until an approval arrives; raise :class:`ApprovalRejected` on no or timeout.

    An approval from the person who started the run is refused (four eyes) unless ``allow_self_approval``; the run
    then waits for someone else until the same deadline.
    """
    logger = get_run_logger()
    deadline = time.monotonic() + timeout_seconds
    attempt = 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ApprovalRejected(f"no approval for {question!r} within {timeout_seconds:.0f}s")
        attempt += 1
        try:
            decision = pause_flow_run(
                wait_for_input=ApprovalDecision.with_initial_data(description=question),
                timeout=max(1, int(remaining)),
                poll_interval=poll_seconds,
                key=re.sub(r"[^a-z0-9-]", "-", f"{key}-{attempt}".lower()),  # the only characters Prefect allows
            )
        except FlowPauseTimeout:
            raise ApprovalRejected(f"no approval for {question!r} within {timeout_seconds:.0f}s") from None
        if decision.approved and decision.approver == started_by and not allow_self_approval:
            logger.warning(
                "Approval by %s refused: they started this run, and this deployment requires a second person.",
                decision.approver,
            )
            continue
        if not decision.approved:
            raise ApprovalRejected(f"{decision.approver} rejected {question!r}: {decision.reason}")
        return decision


class NotWaitingForApproval(RotationError):
    """The flow run named is not paused for an approval."""


def give_decision(flow_run_id: str, *, approved: bool, approver: str, reason: str) -> None:
    """Answer a paused run's approval, as the UI's Resume button does; refusals by the server are errors."""
    decision = ApprovalDecision(approved=approved, approver=approver, reason=reason)
    try:
        resume_flow_run(UUID(flow_run_id), run_input=decision.model_dump())
    except NotPausedError:
        raise NotWaitingForApproval(
            f"flow run {flow_run_id} is not waiting for an approval; `rotate status` shows what is"
        ) from None
    except RuntimeError as exc:
        raise NotWaitingForApproval(f"the Prefect server refused the decision for {flow_run_id}: {exc}") from None
