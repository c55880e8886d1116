"""The runbook core on a real Prefect server and a local store: order of undo steps, lock, audit, resume keys."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from prefect import flow, task

from errors import Refused
from flows.recovery import rollback_rotation
from rotation import RotationOptions, RotationRolledBack, Undo, rotation, runbook
from rotation.journal import Journal, RotationState
from stores import Stage, open_store
from targets.consumers import CommandRestart, Consumer
from tasks.consumers import restart_consumers
from tasks.secrets import discard_secret
from tests.fixtures.crash import OPERATOR


def _recorder(log: Path, word: str, secret: str) -> Consumer:
    """A consumer whose restart appends ``word`` and the fingerprint of the store's CURRENT value to ``log``."""
    script = (
        "import sys; from stores import open_store; from redaction import fingerprint; "
        "open(sys.argv[1], 'a').write(sys.argv[2] + ' ' + fingerprint(open_store(sys.argv[3]).read()) + '\\n')"
    )
    return Consumer(name=word, restart=CommandRestart(command=[sys.executable, "-c", script, str(log), word, secret]))


@task
def failing_check() -> None:
    raise RuntimeError("the new credential was refused")


def _next(current: str) -> str:
    return current + "-next"


@runbook("toy")
@flow(persist_result=False)
def toy_runbook(secret: str, log: str, fail: bool, options: RotationOptions) -> dict:
    with rotation(secret, options, [_recorder(Path(log), "restart", secret)]) as r:
        r.stage("stage", _next)
        applied = _recorder(Path(log), "apply", secret)
        undo = _recorder(Path(log), "undo-apply", secret)
        r.apply(
            "apply",
            restart_consumers,
            secret,
            r.id,
            [applied],
            undo=Undo(restart_consumers, consumers=[undo.model_dump()]),
        )
        r.promote("promote")
        r.restart("restart")
        if fail:
            r.verify("check", failing_check)
    return r.summary()


@pytest.fixture
def secret(local_store_factory) -> str:
    store = local_store_factory()
    store.create("value-one-0123456789")
    return store.uri.display


def test_a_rotation_completes_and_releases_its_lock(prefect_server, secret, tmp_path) -> None:
    options = RotationOptions(approve_promote=False, journal=str(tmp_path / "j.db"))
    summary = toy_runbook(secret, str(tmp_path / "log"), False, options)
    store = open_store(secret)
    assert store.read(Stage.CURRENT) == "value-one-0123456789-next"
    assert store.read(Stage.PREVIOUS) == "value-one-0123456789"
    journal = Journal(tmp_path / "j.db")
    assert journal.get(summary["rotation_id"]).state is RotationState.COMPLETED
    assert journal.list(active_only=True) == []
    steps = [(e.step, e.status) for e in journal.events(summary["rotation_id"])]
    assert ("rotation", "completed") in steps
    assert ("promote", "completed") in steps


def test_a_failed_verification_undoes_in_reverse_and_restarts_consumers_last(prefect_server, secret, tmp_path):
    store = open_store(secret)
    before = store.describe()
    options = RotationOptions(approve_promote=False, journal=str(tmp_path / "j.db"))
    with pytest.raises(RotationRolledBack, match="refused"):
        toy_runbook(secret, str(tmp_path / "log"), True, options)
    assert store.read(Stage.CURRENT) == "value-one-0123456789"
    after = store.describe()
    assert after.version_at(Stage.CURRENT) == before.version_at(Stage.CURRENT)
    assert after.version_at(Stage.PENDING) is None
    lines = (tmp_path / "log").read_text().split("\n")[:-1]
    words = [line.split()[0] for line in lines]
    assert words == ["apply", "restart", "undo-apply", "restart"]
    # The last restart happened after the store was reverted: the consumer loaded the old value again.
    assert lines[-1].split()[1] == lines[0].split()[1]
    assert lines[1].split()[1] != lines[0].split()[1]
    journal = Journal(tmp_path / "j.db")
    (record,) = journal.list()
    assert record.state is RotationState.ROLLED_BACK
    assert "refused" in record.reason
    assert all(u.done for u in journal.undos(record.id))


def test_an_undo_is_recorded_before_its_step_runs(prefect_server, secret, tmp_path) -> None:
    journal = Journal(tmp_path / "j.db")
    seen: list[list[str]] = []

    @runbook("peeking")
    @flow(persist_result=False)
    def peeking(secret: str) -> None:
        with rotation(secret, RotationOptions(approve_promote=False, journal=journal.location)) as r:
            r.apply("peek", lambda: seen.append([u.task for u in journal.undos(r.id)]), undo=Undo(discard_secret))

    peeking(secret)
    assert seen == [[discard_secret.name]]


@task
def forget_old_value() -> str:
    return "retired"


@runbook("toy-retiring")
@flow(persist_result=False)
def toy_retiring(secret: str, options: RotationOptions) -> dict:
    with rotation(secret, options) as r:
        r.stage("stage", _next)
        r.promote("promote")
        r.retire("retire", forget_old_value)
    return r.summary()


@pytest.mark.parametrize("keep", [0, 1])
def test_after_retirement_versions_no_stage_points_to_are_destroyed(prefect_server, secret, tmp_path, keep) -> None:
    options = RotationOptions(approve_promote=False, journal=str(tmp_path / "j.db"), keep_versions=keep)
    first, second = toy_retiring(secret, options), toy_retiring(secret, options)
    versions = open_store(secret).describe().versions
    # CURRENT and PREVIOUS stay (a revert needs PREVIOUS); the value two rotations old is gone, or kept for audit.
    assert len(versions) == 2 + keep
    assert {v.version_id for v in versions if v.stages} == {first["rotation_id"], second["rotation_id"]}


@task
def retire_half_way() -> str:
    raise RuntimeError("the old login was disabled on one node of two")


@runbook("toy-failing-retirement")
@flow(persist_result=False)
def toy_failing_retirement(secret: str, options: RotationOptions) -> dict:
    with rotation(secret, options) as r:
        r.stage("stage", _next)
        r.promote("promote")
        r.retire("retire", retire_half_way)
    return r.summary()


def test_a_failure_during_retirement_is_carried_forward_not_rolled_back(prefect_server, secret, tmp_path) -> None:
    options = RotationOptions(approve_promote=False, journal=str(tmp_path / "j.db"))
    with pytest.raises(RuntimeError, match="one node of two"):
        toy_failing_retirement(secret, options)
    (record,) = Journal(tmp_path / "j.db").list()
    assert record.state is RotationState.FAILED and record.retired_at is not None
    assert open_store(secret).read(Stage.CURRENT) == "value-one-0123456789-next"  # not reverted


@runbook("toy-person-revokes")
@flow(persist_result=False)
def toy_person_revokes(secret: str, options: RotationOptions) -> dict:
    with rotation(secret, options) as r:
        r.stage("stage", _next)
        r.promote("promote")
        r.approve("approve-revoke", "Approve, then revoke the old password at the provider", person_retires=True)
        r.verify("check", failing_check)  # the old password is still accepted: the person has not revoked it yet
    return r.summary()


def test_an_approval_on_which_a_person_revokes_the_old_credential_is_the_point_of_no_return(
    prefect_server, secret, tmp_path
) -> None:
    journal = Journal(tmp_path / "j.db")
    options = RotationOptions(journal=journal.location, preapproved={"approver": "bob"}, approve_promote=False)
    with pytest.raises(RuntimeError, match="the new credential was refused"):
        toy_person_revokes(secret, options)
    (record,) = journal.list()
    # Not rolled back to a password the person may have revoked already: carried forward, and refused a rollback.
    assert record.state is RotationState.FAILED and record.retired_at is not None
    assert open_store(secret).read(Stage.CURRENT) == "value-one-0123456789-next"
    with pytest.raises(Refused, match="point of no return"):
        rollback_rotation(record.id, OPERATOR, journal=journal.location)
