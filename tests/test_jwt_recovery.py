"""A rotation whose process is killed after staging: re-run (resume) it to completion, or roll it back.

The runbook runs in a real ``rotate`` process, which is SIGKILLed while it waits for approval; the recovery runs
as another ``rotate`` process, as an operator would do it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from uuid import UUID

import pytest
from prefect import get_client

from rotation.approval import waiting_for
from rotation.journal import Journal, RotationState
from stores import Stage
from targets.jwt.keyset import JwtKeyset, new_key
from tests.test_jwt_runbook import signing_kid

ROTATE = str(Path(sys.executable).parent / "rotate")


def rotate(*args: str, **kwargs) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [ROTATE, *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs
    )


def as_person(name: str) -> dict[str, str]:
    """The environment of a command run by ``name``: the OS user is what ``rotate`` records."""
    return {**os.environ, "LOGNAME": name, "USER": name}


def audited(journal: Journal, person: str) -> list[str]:
    """The actions ``rotate audit`` says ``person`` took."""
    trail = subprocess.run(
        [ROTATE, "audit", "--person", person, "--json", "--journal", str(journal.path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert trail.returncode == 0, trail.stdout + trail.stderr
    return [entry["action"] for entry in json.loads(trail.stdout)]


def wait_for(condition, timeout: float = 90, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached in {timeout}s")
        time.sleep(0.2)


def waiting_for_approval(journal: Journal) -> bool:
    """The active rotation's live run waits for an approval."""
    active = journal.list(active_only=True)
    return (
        bool(active)
        and active[0].lease_live()
        and waiting_for(journal, active[0].id, active[0].flow_run_id) is not None
    )


@pytest.fixture
def killed_after_staging(prefect_server, local_store_factory, auth_service, tmp_path):
    """A rotation killed (SIGKILL) while it waits for approval, after it staged the new keyset."""
    store = local_store_factory()
    store.create(JwtKeyset(keys=[new_key("HS256", 512)]).to_secret())
    service = auth_service(store.uri.display)
    journal = Journal(tmp_path / "journal.db")
    before = store.describe()
    run = rotate(
        "jwt", store.uri.display,
        "--reload-url", f"{service.base_url}/reload", "--verify-url", f"{service.base_url}/me",
        "--token-lifetime", "1", "--grace", "1", "--journal", str(journal.path),
    )  # fmt: skip
    try:
        wait_for(lambda: waiting_for_approval(journal), what="the approval pause")
    finally:
        os.kill(run.pid, signal.SIGKILL)
        run.wait(10)
    (record,) = journal.list()
    assert store.describe().version_at(Stage.PENDING) == record.id
    return store, service, journal, record, before


def test_a_killed_rotation_is_completed_by_resuming_it(killed_after_staging) -> None:
    store, service, journal, record, _ = killed_after_staging
    wait_for(lambda: not journal.get(record.id).lease_live(), what="the killed run's lease to expire")
    resumed = rotate("resume", record.id, "--journal", str(journal.path), env=as_person("erin"))
    wait_for(lambda: waiting_for_approval(journal), what="the approval pause of the resumed run")
    assert journal.get(record.id).flow_run_id != record.flow_run_id
    with get_client(sync_client=True) as client:  # the killed run no longer offers its approval in the UI
        assert client.read_flow_run(UUID(record.flow_run_id)).state.is_crashed()
    approval = subprocess.run(
        [ROTATE, "approve", record.id, "--approver", "bob", "--reason", "resume test", "--journal", str(journal.path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert approval.returncode == 0, approval.stdout + approval.stderr
    out, _ = resumed.communicate(timeout=180)
    assert resumed.returncode == 0, out
    done = journal.get(record.id)
    assert done.state is RotationState.COMPLETED
    current = JwtKeyset.from_secret(store.read(Stage.CURRENT))
    staged_kid = journal.steps(record.id)["find-new-key"].facts["new"]
    assert [k.kid for k in current.keys] == [staged_kid]
    assert store.describe().version_at(Stage.PREVIOUS) == record.id  # the keyset staged before the kill
    assert signing_kid(service) == staged_kid
    assert audited(journal, "erin") == ["resumed"]


def test_a_killed_rotation_is_undone_by_rotate_rollback(killed_after_staging) -> None:
    store, service, journal, record, before = killed_after_staging
    old_kid = signing_kid(service)
    wait_for(lambda: not journal.get(record.id).lease_live(), what="the killed run's lease to expire")
    undo = subprocess.run(
        [ROTATE, "rollback", record.id, "--journal", str(journal.path)],
        capture_output=True, text=True, timeout=120, env=as_person("erin"),
    )  # fmt: skip
    assert undo.returncode == 0, undo.stdout + undo.stderr
    assert audited(journal, "erin") == ["rolled back"]
    after = store.describe()
    assert after.version_at(Stage.CURRENT) == before.version_at(Stage.CURRENT)
    assert after.version_at(Stage.PENDING) is None
    assert journal.get(record.id).state is RotationState.ROLLED_BACK
    assert journal.list(active_only=True) == []
    assert signing_kid(service) == old_kid
    again = subprocess.run(
        [ROTATE, "rollback", record.id, "--journal", str(journal.path)], capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 1
    assert "already rolled-back" in again.stdout + again.stderr
