"""Settings of the runbook core, read from the environment (``ROTATE_*``), the same for every runbook."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_JOURNAL = Path.home() / ".local" / "state" / "secret-rotation" / "journal.db"


class RotationSettings(BaseSettings):
    """How this process keeps rotations: where the journal is, and how long a run's ownership lasts unrenewed."""

    model_config = SettingsConfigDict(env_prefix="ROTATE_", extra="ignore")

    journal: str = Field(
        default=str(DEFAULT_JOURNAL),
        description="The rotation journal: an SQLite file path (one machine), or a postgresql:// URL (workers on "
        "several machines).",
    )
    lease_seconds: float = Field(
        default=30,
        gt=0,
        description="How long a run owns its rotation without renewing; resume and rollback wait for it to pass "
        "after a crash. The owner renews every third of it.",
    )


def settings() -> RotationSettings:
    """The settings as the environment says now (read on each call: tests and the CLI change the environment)."""
    return RotationSettings()
