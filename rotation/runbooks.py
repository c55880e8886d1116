"""The runbooks by the name each records in the journal, so a rotation can be resumed by its id alone."""

from __future__ import annotations

import importlib
from typing import Any

from errors import RotationError

RUNBOOKS: dict[str, str] = {
    "jwt-signing-key": "flows.jwt:rotate_jwt_signing_key",
    "postgres-credentials": "flows.postgres:rotate_postgres_credentials",
    "redis-password": "flows.redis:rotate_redis_password",
}


def runbook_flow(name: str) -> Any:
    """The flow of the runbook ``name``."""
    if name not in RUNBOOKS:
        raise RotationError(f"unknown runbook {name!r}; known runbooks: {', '.join(sorted(RUNBOOKS))}")
    module, _, attribute = RUNBOOKS[name].partition(":")
    return getattr(importlib.import_module(module), attribute)
