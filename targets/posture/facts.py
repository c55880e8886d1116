"""What the posture report is made from: facts gathered from the stores, the rotation journal, Prefect's deployments
and the backup destination. Ids, names, dates, counts and keyed fingerprints; never a value."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict

from targets.posture.shapes import ValueFacts


class SecretFacts(BaseModel):
    """One secret of one store, as ``describe`` and one read of its CURRENT value show it."""

    model_config = ConfigDict(frozen=True)

    uri: str  # the secret's identity, as the journal and the deployments name it
    name: str
    environment: str  # the store selection it was found through
    current_version: str | None = None
    current_created_at: datetime | None = None
    pending_version: str | None = None  # a PENDING stage on a version other than CURRENT: a rotation in flight
    value: ValueFacts | None = None
    error: str | None = None  # why it could not be read (a message without values)


class RotationFacts(BaseModel):
    """The newest rotation of a secret in the journal."""

    model_config = ConfigDict(frozen=True)

    rotation_id: str
    runbook: str
    state: str
    started_by: str
    started_at: datetime
    updated_at: datetime
    reason: str = ""
    lease_live: bool = False
    holds_lock: bool = False
    due: datetime | None = None  # a waiting rotation: when its follow-up run was due
    last_completed_at: datetime | None = None  # the newest rotation of this secret that completed


class ScheduleFacts(BaseModel):
    """One Prefect deployment that rotates one or more secrets."""

    model_config = ConfigDict(frozen=True)

    deployment: str  # flow name/deployment name
    secrets: tuple[str, ...]  # identities, as in SecretFacts.uri
    schedules: int  # how many schedules it has
    active: bool  # at least one schedule is active and the deployment is not paused
    next_at: datetime | None = None  # the next time an active schedule fires
    inactive_schedule_ids: tuple[str, ...] = ()


class DrillFacts(BaseModel):
    model_config = ConfigDict(frozen=True)

    drill_id: str
    at: datetime
    backup_id: str | None
    result: str
    reason: str | None = None


class BackupFacts(BaseModel):
    """A backup destination: when each secret was last backed up, and the last restore drill."""

    model_config = ConfigDict(frozen=True)

    destination: str
    backups: int
    newest_backup_at: datetime | None = None
    last_backed_up: dict[str, datetime] = {}  # secret identity -> time of the newest backup holding it
    last_drill: DrillFacts | None = None
