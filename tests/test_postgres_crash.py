"""A runbook process SIGKILLed at each step is resumed or rolled back, with a working credential at every moment.

The flow runs in a child process killed at the chosen step boundary (``tests/fixtures/crash.py``). A client thread
reads the CURRENT secret and logs in every ~15 ms throughout, kill and recovery included.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg2
import pytest

from flows.postgres import PgPolicy, rotate_postgres_credentials
from flows.recovery import rollback_rotation
from rotation import RotationOptions
from rotation.journal import Journal, RotationState
from stores import Stage, open_store
from tests.fixtures.crash import OPERATOR, run_child
from tests.fixtures.postgres import PgApp


@contextmanager
def reconnecting_client(app: PgApp) -> Iterator[list[str]]:
    """Log in with the CURRENT secret every ~15 ms; yields the list of failed logins."""
    stop, failures, logins = threading.Event(), [], [0]

    def client() -> None:
        store = open_store(app.uri)
        while not stop.is_set():
            value = json.loads(store.read(Stage.CURRENT))
            try:
                app.cluster.connect(app.dbname, value["username"], value["password"]).close()
            except psycopg2.OperationalError as exc:
                failures.append(str(exc).splitlines()[0])
            logins[0] += 1
            time.sleep(0.015)

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    try:
        yield failures
    finally:
        stop.set()
        thread.join(10)
    assert logins[0] > 20


ALTERNATING = [
    ("stage-password", "started"),
    ("prepare-users", "completed"),  # users prepared (adoption done, clone created)
    ("set-password", "completed"),  # the clone has its new password
    ("promote", "completed"),  # the secret points at the clone
    ("grace", "sleeping"),  # grace period
]


def kill_at(forkserver, app: PgApp, policy: dict, journal: Journal, tmp_path: Path, step: str, phase: str) -> str:
    """Run the runbook in a child process killed at ``step``/``phase``; wait until its lease has expired."""
    kwargs = {"secret": app.uri, "policy": policy}
    assert run_child(forkserver, "postgres-credentials", kwargs, journal, tmp_path / "trace", (step, phase)) == -9
    (record,) = journal.list()
    assert record.state is RotationState.RUNNING
    while journal.get(record.id).lease_live():
        time.sleep(0.1)
    return record.id


@pytest.mark.parametrize("recovery", ["resume", "rollback"])
@pytest.mark.parametrize(("step", "phase"), ALTERNATING, ids=[f"{s}-{p}" for s, p in ALTERNATING])
def test_alternating_rotation_killed_at_each_step(
    forkserver, short_leases, pg_app: Callable[..., PgApp], tmp_path: Path, step: str, phase: str, recovery: str
) -> None:
    app = pg_app()
    journal = Journal(tmp_path / "journal.db")
    policy = {"grace_seconds": 20 if phase == "sleeping" else 0, "retire": "keep"}
    before, roles = app.secret.describe(), app.roles()
    with reconnecting_client(app) as failures:
        rotation_id = kill_at(forkserver, app, policy, journal, tmp_path, step, phase)
        if recovery == "resume":
            policy["grace_seconds"] = 0  # the recorded due time still holds; do not wait for it here
            options = RotationOptions(resume=rotation_id, journal=journal.location, approve_promote=False)
            summary = rotate_postgres_credentials(app.uri, policy=PgPolicy(**policy), options=options)
            assert summary["state"] == "completed"
        else:
            rollback_rotation(rotation_id, OPERATOR, journal=journal.location)
    assert failures == [], "a client reading the CURRENT secret saw a failed login"
    record = journal.get(rotation_id)
    current = app.current()
    assert app.can_login(current["username"], current["password"])
    if recovery == "resume":
        assert record.state is RotationState.COMPLETED
        assert current["username"] == f"{app.user}_clone"
        assert app.secret.describe().version_at(Stage.CURRENT) == rotation_id
        assert app.can_login(app.user, app.password)  # the previous user is kept
    else:
        assert record.state is RotationState.ROLLED_BACK
        after = app.secret.describe()
        assert after.version_at(Stage.CURRENT) == before.version_at(Stage.CURRENT)
        assert after.version_at(Stage.PENDING) is None
        assert app.roles() == roles and current["password"] == app.password


@pytest.mark.parametrize("recovery", ["resume", "rollback"])
def test_single_user_rotation_killed_after_the_change(
    forkserver, short_leases, pg_app: Callable[..., PgApp], tmp_path: Path, recovery: str
) -> None:
    app = pg_app()
    journal = Journal(tmp_path / "journal.db")
    policy = {"strategy": "single-user", "grace_seconds": 0}
    rotation_id = kill_at(forkserver, app, policy, journal, tmp_path, "change-password-and-promote", "completed")
    if recovery == "resume":
        options = RotationOptions(resume=rotation_id, journal=journal.location, approve_promote=False)
        rotate_postgres_credentials(app.uri, policy=PgPolicy(**policy), options=options)
        assert app.secret.describe().version_at(Stage.CURRENT) == rotation_id
    else:
        rollback_rotation(rotation_id, OPERATOR, journal=journal.location)
        assert app.current()["password"] == app.password
    current = app.current()
    assert app.can_login(current["username"], current["password"])
