"""The record a restore drill leaves at the backup destination, for the posture report: one JSON object per drill
under ``drills/``, named so that names sort by time. It holds ids, counts and a reason, never a value.

    {"drill_id": "20260201T040000Z-3c4d5e6f", "at": "2026-02-01T04:00:00Z", "backup_id": "20260201T020000Z-1a2b3c4d",
     "result": "passed", "secrets_checked": 42, "versions_checked": 84, "reason": null, "flow_run_id": "..."}
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict

from targets.backup.destination import DRILLS, Destination


class DrillRecord(BaseModel):
    model_config = ConfigDict(frozen=True)

    drill_id: str
    at: datetime
    backup_id: str | None
    result: Literal["passed", "failed"]
    secrets_checked: int = 0
    versions_checked: int = 0
    reason: str | None = None
    flow_run_id: str | None = None

    @property
    def name(self) -> str:
        return f"{DRILLS}{self.drill_id}.json"


def write_record(destination: Destination, record: DrillRecord) -> str:
    destination.write(record.name, record.model_dump_json(indent=2).encode())
    return record.name


def latest_record(destination: Destination) -> DrillRecord | None:
    """The newest drill's record, or None if no drill ran against this destination."""
    names = [n for n in destination.names(DRILLS) if n.endswith(".json")]
    return DrillRecord.model_validate_json(destination.read(names[-1])) if names else None
