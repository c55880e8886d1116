"""Which backups a retention policy keeps: the newest backup of each of the last N days, and of the last M months.

Days and months are those that have a backup (a week without backups does not use up the daily allowance), in UTC.
The two rules are independent: a backup is kept when either keeps it, so the newest backup is always kept.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class RetentionPolicy(BaseModel):
    model_config = ConfigDict(frozen=True)

    keep_daily: int = Field(7, ge=1, description="The newest backup of each of the last N days with backups")
    keep_monthly: int = Field(12, ge=0, description="The newest backup of each of the last M months with backups")


def _newest_per_period(backups: dict[str, datetime], period: Callable[[datetime], str], count: int) -> set[str]:
    kept: dict[str, str] = {}
    for backup_id in sorted(backups, key=lambda b: (backups[b], b), reverse=True):
        key = period(backups[backup_id])
        if key not in kept:
            if len(kept) == count:
                break
            kept[key] = backup_id
    return set(kept.values())


def expired(backups: dict[str, datetime], policy: RetentionPolicy) -> list[str]:
    """The ids in ``backups`` (id -> creation time, UTC) that ``policy`` does not keep, oldest first."""
    kept = _newest_per_period(backups, lambda t: f"{t:%Y-%m-%d}", policy.keep_daily)
    kept |= _newest_per_period(backups, lambda t: f"{t:%Y-%m}", policy.keep_monthly)
    return sorted((b for b in backups if b not in kept), key=lambda b: (backups[b], b))
