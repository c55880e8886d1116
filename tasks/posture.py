"""Steps of the posture report: read the facts (stores, Prefect's deployments, the backup destination; the rotation
journal's are read by :mod:`rotation.history`), then publish the report (artifacts, an event).

The readers change nothing. ``inspect_secrets`` is the only one that reads values: each CURRENT value is judged
in memory (:func:`targets.posture.shapes.inspect_value`) and only its shape, strengths and keyed fingerprints leave
the task. The fingerprint key is random per process and never leaves it, so a fingerprint can be compared with the
others of the same report and tested against nothing else.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from prefect import get_client, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.responses import DeploymentResponse
from prefect.events import emit_event
from prefect.server.schemas.schedules import CronSchedule, IntervalSchedule, RRuleSchedule
from prefect.utilities.asyncutils import run_coro_as_sync

from errors import RotationError
from stores import Stage, open_store
from stores.errors import StoreError
from targets.backup.archive import Manifest, backup_time
from targets.backup.destination import manifest_name, open_destination
from targets.backup.drills import latest_record
from targets.posture.checks import PostureReport
from targets.posture.facts import BackupFacts, DrillFacts, ScheduleFacts, SecretFacts
from targets.posture.render import markdown, table_rows
from targets.posture.shapes import inspect_value
from tasks import retry_if_transient
from tasks.backup import Selection

_RETRY = {"retries": 3, "retry_delay_seconds": [1, 5, 15], "retry_condition_fn": retry_if_transient}
_FINGERPRINT_KEY = os.urandom(32)
#: The runbooks' parameters that name the secrets a deployment rotates.
_SECRET_PARAMETERS = ("secret", "secrets")
_PAGE = 200
_READERS = 8
_ANNOUNCED = 50  # secrets named in the event; the artifacts list them all


def _secret_facts(selection: Selection, name: str, renew_before_days: float | None) -> SecretFacts:
    uri = selection.uri_of(name)
    facts = SecretFacts(uri=uri, name=name, environment=selection.display)
    try:
        store = open_store(uri)
        description = store.describe(dated=True)
        current = next((v for v in description.versions if Stage.CURRENT in v.stages), None)
        pending = description.version_at(Stage.PENDING)
        facts = facts.model_copy(
            update={"pending_version": pending if current is None or pending != current.version_id else None}
        )
        if current is None:
            return facts.model_copy(update={"error": f"{uri} has no CURRENT version"})
        value = inspect_value(store.read_version(current.version_id), _FINGERPRINT_KEY, renew_before_days)
    except StoreError as exc:  # a store's messages never quote a value
        return facts.model_copy(update={"error": str(exc)})
    return facts.model_copy(
        update={"current_version": current.version_id, "current_created_at": current.created_at, "value": value}
    )


@task(cache_policy=NO_CACHE, **_RETRY)
def inspect_secrets(selection: str, renew_before_days: float | None = None) -> list[SecretFacts]:
    """Every secret of a store selection (``aws://prod/*``): versions, dates, stages, and what its CURRENT value is
    and how strong, without the value."""
    chosen = Selection.parse(selection)
    # Two store calls per secret, which for a remote store are two round trips: a few at a time.
    with ThreadPoolExecutor(max_workers=_READERS) as pool:
        return list(pool.map(lambda name: _secret_facts(chosen, name, renew_before_days), chosen.names()))


def _named_secrets(parameters: dict[str, Any]) -> tuple[str, ...]:
    named = []
    for key in _SECRET_PARAMETERS:
        value = parameters.get(key)
        for uri in [value] if isinstance(value, str) else value if isinstance(value, list) else []:
            try:
                named.append(open_store(uri).uri.display)
            except (RotationError, StoreError, KeyError, TypeError):
                continue  # not a store URI: this parameter names something else
    return tuple(named)


def _next_fire(schedule: Any, now: datetime) -> datetime | None:
    """When a deployment's schedule next fires, as Prefect's scheduler computes it."""
    for field, kind in (("cron", CronSchedule), ("interval", IntervalSchedule), ("rrule", RRuleSchedule)):
        if getattr(schedule, field, None) is not None:
            dates = run_coro_as_sync(kind.model_validate(schedule.model_dump()).get_dates(n=1, start=now))
            return dates[0] if dates else None
    return None


def _every_deployment(client: SyncPrefectClient) -> Iterator[DeploymentResponse]:
    offset = 0
    while page := client.read_deployments(offset=offset, limit=_PAGE):
        yield from page
        offset += len(page)


@task(cache_policy=NO_CACHE, **_RETRY)
def read_schedules() -> list[ScheduleFacts]:
    """The Prefect deployments that rotate secrets (a ``secret`` or ``secrets`` parameter naming a store URI), each
    with whether a schedule of it is active and when it next fires."""
    now = datetime.now(UTC)
    found = []
    with get_client(sync_client=True) as client:
        flows = {}
        for deployment in _every_deployment(client):
            secrets = _named_secrets(deployment.parameters or {})
            if not secrets:
                continue
            if deployment.flow_id not in flows:
                flows[deployment.flow_id] = client.read_flow(deployment.flow_id).name
            active = [s for s in deployment.schedules if s.active] if not deployment.paused else []
            upcoming = [d for d in (_next_fire(s.schedule, now) for s in active) if d is not None]
            found.append(
                ScheduleFacts(
                    deployment=f"{flows[deployment.flow_id]}/{deployment.name}",
                    secrets=secrets,
                    schedules=len(deployment.schedules),
                    active=bool(active),
                    next_at=min(upcoming) if upcoming else None,
                    inactive_schedule_ids=tuple(str(s.id) for s in deployment.schedules if not s.active),
                )
            )
    return found


@task(cache_policy=NO_CACHE, **_RETRY)
def read_backups(destination: str) -> BackupFacts:
    """When each secret was last backed up (from the manifests, which hold no values) and the last restore drill.

    The manifests are read, not verified: the restore drill is what proves a backup sound."""
    where = open_destination(destination)
    ids = where.backups()
    last: dict[str, datetime] = {}
    for backup_id in reversed(ids):  # newest first: the first backup that holds a secret is its newest
        manifest = Manifest.from_bytes(where.read(manifest_name(backup_id)), backup_id)
        source = Selection.parse(manifest.source)
        at = backup_time(backup_id)
        for secret in manifest.secrets:
            last.setdefault(source.uri_of(secret.name), at)
    drill = latest_record(where)
    return BackupFacts(
        destination=where.display,
        backups=len(ids),
        newest_backup_at=backup_time(ids[-1]) if ids else None,
        last_backed_up=last,
        last_drill=DrillFacts.model_validate(drill.model_dump()) if drill else None,
    )


@task(cache_policy=NO_CACHE)
def publish_posture(report: PostureReport) -> None:
    """The report as Prefect artifacts: a table of every secret and the findings in markdown."""
    create_table_artifact(key="secret-posture", table=table_rows(report), description="secret posture per secret")
    create_markdown_artifact(key="secret-posture-findings", markdown=markdown(report), description="secret posture")


@task(cache_policy=NO_CACHE)
def announce_posture(report: PostureReport) -> None:
    """Tell Prefect whether the policy holds (``secret-rotation.posture.broken`` or ``.healthy``), with counts and
    the failed checks of the first secrets: the automation that notifies people reacts to it."""
    failed: dict[str, list[str]] = {}
    for finding in report.findings:
        if finding.severity == "fail" and (finding.secret in failed or len(failed) < _ANNOUNCED):
            failed.setdefault(finding.secret or "backups", []).append(finding.check)
    emit_event(
        event="secret-rotation.posture." + ("broken" if report.policy_broken else "healthy"),
        resource={"prefect.resource.id": "secret-rotation.posture", "prefect.resource.name": "secret posture"},
        payload={"counts": report.counts, "failed": failed, "stores": list(report.stores)},
    )
