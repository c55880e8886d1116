"""The fleet runbook: several database secrets in one run, a bounded number at a time, failures reported apart."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from flows.fleet import rotate_fleet
from flows.postgres import PgPolicy
from rotation.context import RotationOptions
from rotation.journal import Journal
from tests.fixtures.ports import free_port
from tests.fixtures.postgres import PgApp
from tests.fixtures.prefect import PrefectServer


def test_fleet_rotates_each_secret_and_reports_the_failed_one(
    prefect_server: PrefectServer, pg_app: Callable[..., PgApp], tmp_path: Path
) -> None:
    apps = [pg_app(), pg_app(), pg_app()]
    broken = pg_app(port=free_port())  # nothing listens there
    journal = Journal(tmp_path / "journal.db")
    options = RotationOptions(approve_promote=False, journal=str(journal.path), started_by="test")
    result = rotate_fleet(
        "postgres-credentials",
        [a.uri for a in [*apps, broken]],
        parameters={"policy": PgPolicy(grace_seconds=0)},
        options=options,
        max_concurrency=2,
    )
    assert sorted(result["succeeded"]) == sorted(a.uri for a in apps)
    assert list(result["failed"]) == [broken.uri]
    assert "HostUnreachable" in result["failed"][broken.uri] and broken.password not in str(result)
    for app in apps:
        current = app.current()
        assert current["username"] == f"{app.user}_clone" and app.can_login(current["username"], current["password"])
    # At most two rotations ran at once.
    spans = sorted((r.started_at, r.updated_at) for r in journal.list())
    assert len(spans) == 3
    for i, (start, _) in enumerate(spans):
        assert sum(1 for s, e in spans[:i] if e > start) <= 1
