"""How a PostgreSQL credential is rotated: the strategy, what verification checks, what happens to the old login."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class PgPolicy(BaseModel):
    """The runbook's choices; every field has a safe default."""

    strategy: Literal["alternating-users", "single-user"] = Field(
        default="alternating-users",
        description="alternating-users: two login users take turns (no failed login); single-user: one password.",
    )
    clone_suffix: str = Field(default="_clone", min_length=1, description="Second login user: <user><suffix>.")
    owner_role: str | None = Field(
        default=None, description="NOLOGIN role owning the objects (default: <user>_owner); alternating-users only."
    )
    privilege_checks: list[str] = Field(
        default=[],
        description="Table names (read one row) or SQL statements the new login must be able to run; each runs in "
        "a transaction that is rolled back. Empty: every table the previous user could read.",
    )
    grace_seconds: float = Field(default=300, ge=0, description="The longest connection lifetime of the consumers.")
    retire: Literal["keep", "disable", "drop"] = Field(
        default="keep",
        description="After the grace period: keep the previous user valid until the next rotation (AWS's "
        "behaviour), disable its login, or drop it; its sessions are ended unless keep. Single-user: anything but "
        "keep ends the sessions begun with the old password.",
    )
    password_bytes: int = Field(default=32, ge=16, le=128, description="Random bytes in a new password.")
