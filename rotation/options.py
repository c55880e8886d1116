"""How a rotation runs: approvals, waiting, resuming. The same for every runbook; a flow parameter."""

from __future__ import annotations

from pydantic import BaseModel, Field, field_validator

from rotation.approval import Preapproval


class RotationOptions(BaseModel):
    """How a rotation runs. Names and numbers only: a flow parameter never carries a secret value."""

    resume: str | None = Field(default=None, description="Resume this rotation id instead of starting a new one.")
    resumed_by: str | None = Field(default=None, description="Who asks for the resume (named in the audit trail).")
    started_by: str | None = Field(default=None, description="Who starts the run (default: the OS user).")
    approve_promote: bool = Field(default=True, description="Ask a human before the new credential goes live.")
    approve_retire: bool = Field(default=False, description="Ask a human before the old credential is removed.")
    approval_timeout_seconds: float = Field(default=3600, gt=0)
    allow_self_approval: bool = Field(default=False, description="Let the person who started the run approve it.")
    approval_poll_seconds: int = Field(default=1, ge=1, le=60)
    preapproved: Preapproval | None = Field(
        default=None, description="A decision given in advance (`--yes`): every approval is recorded, none pauses."
    )
    max_sleep_seconds: float = Field(
        default=900, ge=0, description="Longer grace periods are handed to a scheduled follow-up run when deployed."
    )
    journal: str | None = Field(default=None, description="Rotation journal (default: $ROTATE_JOURNAL).")
    steps_as_tasks: bool = Field(
        default=True,
        description="Each step is a Prefect task run. False runs the steps as plain calls with the same retries, "
        "inside the caller's task: a fleet's rotations, one task run per secret instead of one per step.",
    )
    keep_versions: int = Field(
        default=0,
        ge=0,
        description="After retirement, versions no stage points to (a retired key, an old password) are destroyed "
        "but for this many of the newest, kept for audit.",
    )

    @field_validator("journal")
    @classmethod
    def _no_password(cls, journal: str | None) -> str | None:
        # A flow parameter is stored in plain text by Prefect: a journal URL's password must not travel in one.
        if journal and "://" in journal and "@" in journal.partition("://")[2].partition("/")[0]:
            raise ValueError(
                "a journal URL with credentials must not be a flow parameter: set ROTATE_JOURNAL on the worker "
                "(or keep the password in ~/.pgpass) and leave options.journal empty"
            )
        return journal
