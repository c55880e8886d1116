"""Runbook: rotate the PostgreSQL credentials of a fleet, a bounded number at a time.

Each secret is rotated by the single-secret runbook as a subflow (its own lock, journal record and rollback); one
failing does not stop the others. The result says which secrets succeeded and which failed, and why.
"""

from __future__ import annotations

import contextvars
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any

from prefect import flow, get_run_logger
from pydantic import BaseModel, Field

from flows.postgres import PgPolicy, rotate_postgres_credentials
from redaction import redact
from rotation import RotationOptions


class FleetResult(BaseModel):
    """One line per secret: its rotation id on success, the error (names only, never values) on failure."""

    succeeded: dict[str, str] = {}
    failed: dict[str, str] = {}


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
    result = FleetResult()

    def one(secret: str) -> tuple[str, str | None, str | None]:
        try:
            summary = rotate_postgres_credentials(secret, admin_secret, policy=policy, options=options)
        except Exception as exc:  # one failing secret must not stop the fleet
            return secret, None, redact(f"{type(exc).__name__}: {exc}")
        return secret, summary["rotation_id"], None

    with ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="pg-fleet") as pool:
        # Each thread runs in a copy of this flow's context, so the rotations show as its subflows.
        futures = [pool.submit(contextvars.copy_context().run, one, s) for s in dict.fromkeys(secrets)]
        for future in futures:
            secret, rotation_id, error = future.result()
            if error is None:
                result.succeeded[secret] = str(rotation_id)
            else:
                result.failed[secret] = error
                logger.error("Rotation of %s failed: %s", secret, error)
    logger.info("Fleet: %d rotated, %d failed", len(result.succeeded), len(result.failed))
    return result.model_dump()
