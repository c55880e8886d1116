"""Runbook: rotate a fleet of secrets with one runbook (every database login of a fleet, every Redis user...), a
bounded number at a time.

Each secret is rotated by its runbook as one task of this run (its own lock, journal record and rollback; see
rotation/fleet.py); one failing does not stop the others. The result says which secrets succeeded and which failed,
and why. Every member is approved in advance (``options.preapproved``) or needs no approval.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from prefect import flow, get_run_logger
from pydantic import Field

from flows import jwt, postgres, redis_password  # noqa: F401 - each registers its runbook
from rotation import RotationOptions
from rotation.fleet import fan_out


@flow(name="rotate-fleet", log_prints=False, persist_result=False)
def rotate_fleet(
    runbook: Literal["postgres-credentials", "redis-password", "jwt-signing-key"],
    secrets: list[str],
    parameters: dict[str, Any] | None = None,
    options: RotationOptions | None = None,
    max_concurrency: Annotated[int, Field(ge=1, le=64)] = 4,
) -> dict[str, Any]:
    """Rotate every secret in ``secrets`` (store URIs) with ``runbook``, each with ``parameters`` (the runbook's
    other parameters: ``policy``, ``admin_secret``, ``consumers``), at most ``max_concurrency`` at once."""
    logger = get_run_logger()
    shared = {**(parameters or {}), "options": options}
    members = [{**shared, "secret": secret} for secret in dict.fromkeys(secrets)]
    result = fan_out(runbook, members, max_concurrency)
    for secret, error in result.failed.items():
        logger.error("Rotation of %s failed: %s", secret, error)
    logger.info("Fleet: %d rotated, %d failed", len(result.succeeded), len(result.failed))
    return result.model_dump()
