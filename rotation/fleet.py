"""Rotating a fleet: many secrets with one runbook, a bounded number at a time, in one flow run.

Each member rotation is one task run (``rotate <secret>``) whose steps run inline (``steps_as_tasks=False``): the
journal records every step, its lock, lease and rollback are its own, and the Prefect server sees a handful of
writes per secret instead of dozens, so it is not what limits the fleet. One failing secret never stops the others;
the result lists each. A member rotation cannot pause, so the fleet is approved in advance (or needs no approval).
"""

from __future__ import annotations

import contextvars
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from errors import BadInput
from redaction import redact
from rotation import runbooks
from rotation.options import RotationOptions


class FleetResult(BaseModel):
    """One line per secret: its rotation id on success, the error (names only, never values) on failure."""

    succeeded: dict[str, str] = {}
    failed: dict[str, str] = {}


@task(cache_policy=NO_CACHE, task_run_name="rotate {secret}")
def rotate_member(runbook: str, secret: str, parameters: dict[str, Any]) -> str:
    """One member's whole rotation, its steps inline; returns its rotation id."""
    book = runbooks.named(runbook)
    with runbooks.running(book, parameters):
        summary = book.body(**book.flow.validate_parameters(parameters))
    return str(summary["rotation_id"])


def fan_out(runbook: str, members: list[dict[str, Any]], max_concurrency: int) -> FleetResult:
    """Rotate every member (the runbook's parameters for one secret), at most ``max_concurrency`` at once."""
    options = [RotationOptions.model_validate(m.get("options") or {}) for m in members]
    if any((o.approve_promote or o.approve_retire) and o.preapproved is None for o in options):
        raise BadInput(
            "a fleet's rotations cannot each pause for a person: give the approval in advance (options.preapproved, "
            "--yes) or turn the approvals off (approve_promote=false, approve_retire=false)"
        )
    result = FleetResult()

    def one(member: dict[str, Any], member_options: RotationOptions) -> tuple[str, str | None, str | None]:
        parameters = to_jsonable_python(
            {**member, "options": member_options.model_copy(update={"steps_as_tasks": False})}
        )
        try:
            return member["secret"], rotate_member(runbook, member["secret"], parameters), None
        except Exception as exc:  # one failing secret must not stop the fleet
            return member["secret"], None, redact(f"{type(exc).__name__}: {exc}")

    with ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="fleet") as pool:
        # Each thread runs in a copy of the flow's context, so the members show as the fleet's task runs.
        futures = [
            pool.submit(contextvars.copy_context().run, one, m, o) for m, o in zip(members, options, strict=True)
        ]
        for future in futures:
            secret, rotation_id, error = future.result()
            if error is None:
                result.succeeded[secret] = str(rotation_id)
            else:
                result.failed[secret] = error
    return result
