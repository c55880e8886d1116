"""``rotate stage``: a person gives a waiting rotation its next value, through a prompt or standard input, never a
flow parameter; an approval without a staged value is refused."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass

from prefect import flow
from typer.testing import CliRunner

from cli.app import app
from rotation import RotationOptions, rotation, runbook
from rotation.approval import waiting_for
from rotation.journal import Journal, RotationState
from rotation.staging import stage_value
from stores import SecretStore, Stage
from tests.prefect_api import resume, run_state


def with_entered_password(current: str, entered: str) -> str:
    return json.dumps({**json.loads(current), "password": entered})


@runbook("entered-by-hand", inputs=[with_entered_password])
@flow(persist_result=False)
def set_by_hand(secret: str, options: RotationOptions) -> dict:
    with rotation(secret, options) as r:
        r.await_value("new-password", "Set the new password at the provider, then stage it", with_entered_password)
        r.promote("promote")
    return r.summary()


def _waiting(journal: Journal) -> str | None:
    active = journal.list(active_only=True)
    if active and waiting_for(journal, active[0].id, active[0].flow_run_id):
        return active[0].id
    return None


@dataclass
class PausedRun:
    store: SecretStore
    rotation_id: str
    thread: threading.Thread
    result: dict


def _paused_run(api_url: str, store: SecretStore, journal: Journal) -> PausedRun:
    """A hand-set rotation of ``store``'s secret run in a thread, once Prefect shows it paused for the value."""
    store.create(json.dumps({"username": "mailer", "password": "old-password-0123"}))
    options = RotationOptions(started_by="alice", journal=journal.location, approve_promote=False)
    result: dict = {}
    run = threading.Thread(target=lambda: result.update(set_by_hand(store.uri.display, options)), daemon=True)
    run.start()
    while (rotation_id := _waiting(journal)) is None:
        time.sleep(0.2)
    while run_state(api_url, journal.get(rotation_id).flow_run_id) != "PAUSED":
        time.sleep(0.2)
    return PausedRun(store, rotation_id, run, result)


def _rotated_to(run: PausedRun, password: str) -> bool:
    run.thread.join(180)
    rotated = json.loads(run.store.read(Stage.CURRENT)) == {"username": "mailer", "password": password}
    return run.result.get("state") == RotationState.COMPLETED and rotated


def test_a_value_staged_on_standard_input_reaches_the_waiting_run(prefect_server, local_store_factory, tmp_path):
    journal = Journal(tmp_path / "journal.db")
    paused = _paused_run(prefect_server.api_url, local_store_factory(), journal)
    rotation_id, record = paused.rotation_id, journal.get(paused.rotation_id)

    # Approved in the UI before anything is staged: refused, and the run asks again.
    answer = {"decision": "approve", "approver": "alice", "reason": "done", "rotation_id": rotation_id}
    resume(prefect_server.api_url, record.flow_run_id, {**answer, "step": "new-password"})
    while not any(e.status == "refused" for e in journal.events(rotation_id)):
        time.sleep(0.2)
    assert (
        "nothing is staged yet"
        in next(e for e in journal.events(rotation_id) if e.status == "refused").details["reason"]
    )

    staged = CliRunner().invoke(
        app, ["stage", rotation_id, "--person", "alice", "--journal", journal.location], input="new-password-4567\n"
    )
    assert staged.exit_code == 0, staged.output
    assert "new-password-4567" not in staged.output
    assert _rotated_to(paused, "new-password-4567")
    parameters = json.dumps(journal.get(rotation_id).parameters)
    assert "new-password-4567" not in parameters


def test_a_run_that_renews_its_lease_late_is_still_told(prefect_server, local_store_factory, tmp_path, monkeypatch):
    """A loaded machine renews a lease late: the run goes on, so the value staged meanwhile must reach it, not be
    left for a resume that the live run refuses."""
    monkeypatch.setenv("ROTATE_LEASE_SECONDS", "6")
    journal = Journal(tmp_path / "journal.db")
    paused = _paused_run(prefect_server.api_url, local_store_factory(), journal)
    rotation_id = paused.rotation_id

    # The journal held by another writer: the run's renewals wait, and its lease expires while it lives.
    holder = sqlite3.connect(journal.path, isolation_level=None, timeout=30)
    holder.execute("BEGIN IMMEDIATE")
    try:
        while journal.get(rotation_id).lease_live():
            time.sleep(0.1)
        staged = stage_value(journal, rotation_id, "new-password-4567", "alice")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert staged.decision is not None, "the live run was taken for stopped and not told"
    assert _rotated_to(paused, "new-password-4567")


def test_a_value_staged_while_the_run_is_stopped_is_taken_by_the_resumed_run(
    prefect_server, local_store_factory, tmp_path
) -> None:
    store = local_store_factory()
    store.create(json.dumps({"username": "mailer", "password": "old-password-0123"}))
    journal = Journal(tmp_path / "journal.db")
    options = RotationOptions(
        started_by="alice", journal=journal.location, approve_promote=False, approval_timeout_seconds=2
    )
    try:
        set_by_hand(store.uri.display, options)
    except Exception as exc:  # nobody staged in time: the rotation rolls back
        assert "nobody approved" in str(exc)
    (timed_out,) = journal.list()
    assert timed_out.state is RotationState.ROLLED_BACK
    refused = CliRunner().invoke(app, ["stage", timed_out.id, "--journal", journal.location], input="x-password-1\n")
    assert refused.exit_code == 1 and "already rolled-back" in refused.output
    empty = CliRunner().invoke(app, ["stage", "nope", "--journal", journal.location], input="\n")
    assert empty.exit_code == 1 and "no rotation nope" in empty.output
