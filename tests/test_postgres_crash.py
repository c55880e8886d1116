"""A runbook process SIGKILLed at each step is resumed or rolled back, with a working credential at every moment.

The flow runs in a subprocess; the test watches the rotation journal and kills the process as soon as the chosen
step is recorded. A client thread reads the CURRENT secret and logs in every ~15 ms throughout, kill and recovery
included.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg2
import pytest

from flows.postgres import PgPolicy, rotate_postgres_credentials
from flows.recovery import rollback_rotation
from rotation.context import RotationOptions
from rotation.journal import Journal, RotationState
from stores import Stage, open_store
from tests.fixtures.postgres import PgApp
from tests.fixtures.prefect import PrefectServer

RUN = """
import json, sys
from flows.postgres import rotate_postgres_credentials
from rotation.context import RotationOptions
from flows.postgres import PgPolicy
secret, policy, journal = json.loads(sys.argv[1])
rotate_postgres_credentials(secret, policy=PgPolicy(**policy),
                            options=RotationOptions(approve_promote=False, journal=journal, started_by="test"))
"""


def kill_at(app: PgApp, policy: dict, journal: Journal, step: str, status: str) -> str:
    """Start the runbook in a subprocess and SIGKILL it once ``step`` has ``status`` in the journal."""
    argv = json.dumps([app.uri, policy, str(journal.path)])
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    run = subprocess.Popen([sys.executable, "-c", RUN, argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and run.poll() is None:
            active = journal.list(active_only=True) if journal.path.exists() else []
            if active and any(s.step == step and s.status == status for s in journal.steps(active[0].id)):
                break
            time.sleep(0.005)
        else:
            output = run.stdout.read().decode() if run.poll() is not None and run.stdout else ""
            raise AssertionError(f"the runbook never reached {step} {status}: {output[-3000:]}")
    finally:
        os.kill(run.pid, signal.SIGKILL)
        run.wait(10)
    (record,) = journal.list()
    assert record.state is RotationState.RUNNING
    return record.id


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
    ("2:stage", "started"),
    ("3:apply", "completed"),  # users prepared (adoption done, clone created)
    ("4:apply", "completed"),  # the clone has its new password
    ("7:promote", "completed"),  # the secret points at the clone
    ("9:wait", "waiting"),  # grace period
]


@pytest.mark.parametrize("recovery", ["resume", "rollback"])
@pytest.mark.parametrize(("step", "status"), ALTERNATING, ids=[f"{s}-{t}" for s, t in ALTERNATING])
def test_alternating_rotation_killed_at_each_step(
    prefect_server: PrefectServer,
    pg_app: Callable[..., PgApp],
    tmp_path: Path,
    step: str,
    status: str,
    recovery: str,
) -> None:
    app = pg_app()
    journal = Journal(tmp_path / "journal.db")
    policy = {"grace_seconds": 20 if step == "9:wait" else 0, "retire": "keep"}
    before, roles = app.secret.describe(), app.roles()
    with reconnecting_client(app) as failures:
        rotation_id = kill_at(app, policy, journal, step, status)
        if recovery == "resume":
            policy["grace_seconds"] = 0  # the recorded due time still holds; do not wait for it here
            options = RotationOptions(resume=rotation_id, journal=str(journal.path), approve_promote=False)
            summary = rotate_postgres_credentials(app.uri, policy=PgPolicy(**policy), options=options)
            assert summary["state"] == "completed"
        else:
            rollback_rotation(rotation_id, str(journal.path))
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
    prefect_server: PrefectServer, pg_app: Callable[..., PgApp], tmp_path: Path, recovery: str
) -> None:
    app = pg_app()
    journal = Journal(tmp_path / "journal.db")
    policy = {"strategy": "single-user", "grace_seconds": 0}
    rotation_id = kill_at(app, policy, journal, "4:apply", "completed")
    if recovery == "resume":
        options = RotationOptions(resume=rotation_id, journal=str(journal.path), approve_promote=False)
        rotate_postgres_credentials(app.uri, policy=PgPolicy(**policy), options=options)
        assert app.secret.describe().version_at(Stage.CURRENT) == rotation_id
    else:
        rollback_rotation(rotation_id, str(journal.path))
        assert app.current()["password"] == app.password
    current = app.current()
    assert app.can_login(current["username"], current["password"])
