"""Runbook: rotate the PostgreSQL credentials of a fleet, a bounded number at a time.

Each secret is rotated by the PostgreSQL runbook as one task of this run (its own lock, journal record and
rollback; see rotation/fleet.py); one failing does not stop the others. The result says which secrets succeeded and
which failed, and why.
"""

from __future__ import annotations

from typing import Annotated, Any

from prefect import flow, get_run_logger
from pydantic import Field

from flows.postgres import PgPolicy
from rotation import RotationOptions
from rotation.fleet import fan_out


@flow(name="rotate-postgres-fleet", log_prints=False, persist_result=False)
def rotate_postgres_fleet(
    secrets: list[str],
    admin_secret: str | None = None,
    policy: PgPolicy | None = None,
    options: RotationOptions | None = None,
    max_concurrency: Annotated[int, Field(ge=1, le=64)] = 4,
) -> dict[str, Any]:
    """Rotate every secret in ``secrets`` (store URIs), at most ``max_concurrency`` at once."""
    logger = get_run_logger()
    members = [
        {"secret": secret, "admin_secret": admin_secret, "policy": policy, "options": options}
        for secret in dict.fromkeys(secrets)
    ]
    result = fan_out("postgres-credentials", members, max_concurrency)
    for secret, error in result.failed.items():
        logger.error("Rotation of %s failed: %s", secret, error)
    logger.info("Fleet: %d rotated, %d failed", len(result.succeeded), len(result.failed))
    return result.model_dump()
