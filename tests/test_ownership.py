"""One rotation per secret, owned by one live run, and approvals that go to the run they were meant for.

Each test starts a JWT rotation in a child process (``tests/fixtures/crash.py``) that waits for an approval, so a
second actor can try what an operator might: a second rotation, another spelling of the secret, a rollback while
the owner lives, a decision for the wrong run.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect import flow, get_client
from prefect.flow_runs import resume_flow_run
from typer.testing import CliRunner

from cli.app import app
from errors import BadInput, Refused
from flows.jwt import JwtPolicy, rotate_jwt_signing_key
from flows.recovery import resume_rotation, rollback_rotation
from rotation import RotationOptions, rotation, runbook
from rotation.approval import ApprovalDecision, give_decision, waiting_for
from rotation.context import RunbookChanged
from rotation.journal import Journal, RotationInProgress, RotationState
from stores import SecretStore, Stage
from targets.jwt.keyset import JwtKeyset, new_key
from tests.fixtures.crash import OPERATOR, start_child

POLICY = {"token_lifetime_seconds": 0, "grace_seconds": 0}


@pytest.fixture
def keyset(local_store_factory: Callable[[], SecretStore]) -> SecretStore:
    store = local_store_factory()
    store.create(JwtKeyset(keys=[new_key("HS256", 512)]).to_secret())
    return store


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout} s"
        time.sleep(0.1)


def paused_rotation(forkserver: Any, store: SecretStore, journal: Journal, tmp_path: Path) -> tuple[Any, str]:
    """A rotation in a live child process, paused for its promotion approval; returns (the child, its id)."""
    child = start_child(
        forkserver,
        "jwt-signing-key",
        {"secret": store.uri.display, "policy": POLICY},
        journal,
        tmp_path / "t",
        pause=True,
    )

    def paused() -> bool:
        active = journal.list(active_only=True)
        if not active or waiting_for(journal, active[0].id, active[0].flow_run_id) is None:
            return False
        with get_client(sync_client=True) as client:
            return client.read_flow_run(UUID(active[0].flow_run_id)).state.is_paused()

    wait_until(paused, "the approval pause")
    return child, journal.list()[0].id


def kill(child: Any, journal: Journal, rotation_id: str) -> None:
    os.kill(child.pid, signal.SIGKILL)
    child.join(10)
    wait_until(lambda: not journal.get(rotation_id).lease_live(), "the killed run's lease to expire")


def test_a_refused_second_rotation_approves_nothing(forkserver, short_leases, keyset, tmp_path) -> None:
    journal = Journal(tmp_path / "journal.db")
    child, rotation_id = paused_rotation(forkserver, keyset, journal, tmp_path)
    try:
        second = CliRunner().invoke(
            app, ["jwt", keyset.uri.display, "--yes", "--approver", "bob", "--journal", journal.location]
        )
        assert second.exit_code == 1 and "already in progress" in second.output, second.output
        time.sleep(2)  # were the refused command to approve the other run, it would have by now
        assert [e.status for e in journal.events(rotation_id) if e.status in ("approved", "refused")] == []
        record = journal.get(rotation_id)
        assert waiting_for(journal, rotation_id, record.flow_run_id) is not None and record.lease_live()
        assert len(journal.list()) == 1
    finally:
        kill(child, journal, rotation_id)


def test_two_spellings_of_one_secret_are_one_rotation(forkserver, short_leases, keyset, tmp_path) -> None:
    journal = Journal(tmp_path / "journal.db")
    path = Path(keyset.uri.location)
    spelled = f"LOCAL://{path.parent}//./{path.name}?key={path}.key&secret={keyset.uri.name}"
    child, rotation_id = paused_rotation(forkserver, keyset, journal, tmp_path)
    try:
        options = RotationOptions(journal=journal.location, preapproved={"approver": "bob"})
        with pytest.raises(RotationInProgress) as refused:
            rotate_jwt_signing_key(spelled, policy=JwtPolicy(**POLICY), options=options)
        assert f"rotation {rotation_id} of {keyset.uri.display} is already in progress" in str(refused.value)
        assert len(journal.list()) == 1
    finally:
        kill(child, journal, rotation_id)


def test_rollback_waits_for_the_owner_to_stop_and_then_marks_it_crashed(
    forkserver, short_leases, keyset, tmp_path
) -> None:
    journal = Journal(tmp_path / "journal.db")
    before = keyset.describe()
    child, rotation_id = paused_rotation(forkserver, keyset, journal, tmp_path)
    with pytest.raises(Refused, match="still alive"):
        rollback_rotation(rotation_id, OPERATOR, journal=journal.location)
    refused = CliRunner().invoke(app, ["rollback", rotation_id, "--journal", journal.location])
    assert refused.exit_code == 1 and "still run by flow run" in refused.output, refused.output
    assert child.is_alive() and journal.get(rotation_id).state is RotationState.RUNNING
    owner = journal.get(rotation_id).flow_run_id
    kill(child, journal, rotation_id)
    with pytest.raises(BadInput, match="operator is empty: name the person"):  # the audit trail must say who
        rollback_rotation(rotation_id, " ", journal=journal.location)
    assert journal.get(rotation_id).state is RotationState.RUNNING and journal.get(rotation_id).flow_run_id == owner
    rollback_rotation(rotation_id, OPERATOR, journal=journal.location)
    assert journal.get(rotation_id).state is RotationState.ROLLED_BACK
    assert keyset.describe().version_at(Stage.CURRENT) == before.version_at(Stage.CURRENT)
    assert keyset.describe().version_at(Stage.PENDING) is None
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(UUID(owner)).state.is_crashed()


def test_a_resume_after_a_kill_during_an_approval_wait_receives_yes(forkserver, short_leases, keyset, tmp_path):
    journal = Journal(tmp_path / "journal.db")
    child, rotation_id = paused_rotation(forkserver, keyset, journal, tmp_path)
    kill(child, journal, rotation_id)
    resumed = CliRunner().invoke(
        app, ["resume", rotation_id, "--yes", "--approver", "bob", "--journal", journal.location]
    )
    assert resumed.exit_code == 0, resumed.output
    assert journal.get(rotation_id).state is RotationState.COMPLETED
    decision = journal.steps(rotation_id)["approve-promote"].facts
    assert (decision["approver"], decision["via"]) == ("bob", "given in advance (--yes)")


def test_a_decision_given_to_a_run_that_was_killed_reaches_the_run_that_resumes_it(
    forkserver, short_leases, keyset, tmp_path
) -> None:
    journal = Journal(tmp_path / "journal.db")
    child, rotation_id = paused_rotation(forkserver, keyset, journal, tmp_path)
    dead_run = journal.get(rotation_id).flow_run_id
    kill(child, journal, rotation_id)
    # The UI still shows the dead run as paused; a person approves it there.
    decision = {"decision": "approve", "approver": "carol", "reason": "change 7", "rotation_id": rotation_id}
    resume_flow_run(UUID(dead_run), run_input={**decision, "step": "approve-promote"})
    summary = resume_rotation(rotation_id, OPERATOR, journal=journal.location)
    assert summary["state"] == RotationState.COMPLETED
    facts = journal.steps(rotation_id)["approve-promote"].facts
    assert (facts["approver"], facts["via"]) == ("carol", f"given to flow run {dead_run} before it stopped")


def _next(current: str) -> str:
    return current + "-next"


@runbook("changing")
@flow(persist_result=False)
def changing_v1(secret: str, options: RotationOptions) -> None:
    with rotation(secret, options) as r:
        r.stage("stage", _next)
        raise KeyboardInterrupt  # the operator stops it here: nothing is undone, the rotation stays open


def test_a_runbook_whose_step_names_changed_refuses_to_resume_and_still_rolls_back(keyset, tmp_path) -> None:
    journal = Journal(tmp_path / "journal.db")
    options = RotationOptions(journal=journal.location, approve_promote=False)
    before = keyset.describe()
    with pytest.raises(KeyboardInterrupt):
        changing_v1(keyset.uri.display, options)
    (record,) = journal.list()
    assert keyset.describe().version_at(Stage.PENDING) == record.id

    @runbook("changing")
    @flow(persist_result=False)
    def changing_v2(secret: str, options: RotationOptions) -> None:
        with rotation(secret, options) as r:
            r.stage("stage-value", _next)  # renamed since the rotation began

    with pytest.raises(RunbookChanged, match="step\\(s\\) stage that the runbook no longer has"):
        changing_v2(keyset.uri.display, options.model_copy(update={"resume": record.id}))
    assert keyset.describe().version_at(Stage.PENDING) == record.id  # nothing was done by the refused resume
    rollback_rotation(record.id, OPERATOR, journal=journal.location)
    assert keyset.describe().versions == before.versions


def test_two_workers_on_one_postgresql_journal_start_the_same_rotation_and_exactly_one_runs(
    forkserver, short_leases, keyset, pg_database, tmp_path
) -> None:
    environ = {"ROTATE_JOURNAL": pg_database}
    kwargs = {"secret": keyset.uri.display, "policy": POLICY}
    barrier = threading.Barrier(2)

    def worker(n: int) -> Any:
        barrier.wait()
        # Each waits for a person at its promotion, so the winner still owns the secret whenever the loser tries.
        return start_child(forkserver, "jwt-signing-key", kwargs, None, tmp_path / f"w{n}", environ=environ, pause=True)

    workers = [threading.Thread(target=lambda n=n: children.append(worker(n))) for n in range(2)]
    children: list[Any] = []
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    wait_until(lambda: any(child.exitcode is not None for child in children), "one worker's refusal", timeout=120)
    (loser,) = [child for child in children if child.exitcode is not None]
    (winner,) = [child for child in children if child is not loser]
    assert loser.exitcode == 1 and winner.is_alive()
    journal = Journal(pg_database)
    (active,) = journal.list(active_only=True)
    wait_until(lambda: waiting_for(journal, active.id, active.flow_run_id) is not None, "the winner's pause")
    decision = {"decision": "approve", "approver": "bob", "reason": "r", "rotation_id": active.id}
    give_decision(active.flow_run_id, ApprovalDecision(**decision, step="approve-promote"))
    winner.join(120)
    assert winner.exitcode == 0
    (record,) = journal.list()
    assert record.state is RotationState.COMPLETED and journal.list(active_only=True) == []
    assert keyset.describe().version_at(Stage.PREVIOUS) == record.id  # its keyset, then the one without the old key
