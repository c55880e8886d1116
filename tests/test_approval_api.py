"""The three decisions a person gives a paused rotation (approve by a second person, reject, and the two refused: a
blank approver, a self-approval), through the REST API as the UI's form sends them and through ``rotate approve``
with its exit codes; what the paused run shows (question, artifact, log line); and the states runs end in."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from prefect import flow
from prefect.settings import PREFECT_API_URL, temporary_settings
from typer.testing import CliRunner

from cli.app import app
from errors import CheckFailed
from rotation import RotationOptions, RotationRolledBack, rotation, runbook
from rotation.approval import ApprovalDecision, give_decision
from rotation.journal import Journal
from stores import SecretStore, Stage
from tests.doubles.busy_prefect_double import BusyPrefectDouble
from tests.fixtures.prefect import drain_prefect_workers
from tests.prefect_api import call, resume


def _next_value(current: str) -> str:
    return current + "-next"


def _fails(secret: str) -> None:
    raise CheckFailed(f"the new value of {secret} was not accepted")


def _bug(secret: str) -> None:
    raise ZeroDivisionError("a bug, not an explained failure")


@runbook("approval-api")
@flow(persist_result=False)
def promote_with_approval(secret: str, options: RotationOptions, then: str = "nothing") -> dict:
    with rotation(secret, options) as r:
        r.stage("stage-value", _next_value)
        r.promote("promote", ask="Promote the value staged as abc123?")
        if then == "fail-check":
            r.verify("value-works", _fails, secret)
        if then == "bug":
            r.verify("value-works", _bug, secret)
        if then == "fail-retire":
            r.retire("retire-old-value", _fails, secret)
    return r.summary()


class Paused:
    """A runbook run in a thread of this process, and the Prefect server's view of it."""

    def __init__(self, api: str, store: SecretStore, journal: Journal, then: str = "nothing") -> None:
        self.api, self.store, self.journal = api, store, journal
        options = RotationOptions(started_by="alice", journal=journal.location, approval_timeout_seconds=120)
        self.outcome: dict[str, Any] = {}

        def target() -> None:
            try:
                self.outcome["result"] = promote_with_approval(store.uri.display, options, then)
            except BaseException as exc:
                self.outcome["error"] = exc

        self.thread = threading.Thread(target=target, daemon=True)
        self.thread.start()
        self.record = self._wait_for(lambda: journal.list(active_only=True), "the rotation to start")[0]
        self.run_id = str(self.record.flow_run_id)
        self.wait_paused(attempt=1)

    def _wait_for(self, check: Callable[[], Any], what: str, seconds: float = 90) -> Any:
        deadline = time.monotonic() + seconds
        while not (found := check()):
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.2)
        return found

    def run(self) -> dict[str, Any]:
        return call("GET", f"{self.api}/flow_runs/{self.run_id}")

    def waits(self) -> list[dict[str, Any]]:
        return [e.details for e in self.journal.events(self.record.id) if e.status == "waiting"]

    def wait_paused(self, attempt: int) -> None:
        """Until the run is paused for the ``attempt``-th time (a refusal pauses it again)."""
        self._wait_for(
            lambda: len(self.waits()) >= attempt and self.run()["state"]["type"] == "PAUSED", f"pause {attempt}"
        )

    def resume(self, **run_input: Any) -> str:
        """POST the decision as the UI's form does; returns the server's status (ACCEPT, REJECT)."""
        run_input = {"rotation_id": self.record.id, "step": "approve-promote", **run_input}
        return resume(self.api, self.run_id, run_input)

    def artifact(self) -> str:
        body = {"artifacts": {"key": {"any_": [f"rotation-{self.record.id}-approval"]}}, "sort": "CREATED_DESC"}
        artifacts = call("POST", f"{self.api}/artifacts/filter", json=body)
        return artifacts[0]["data"] if artifacts else ""

    def logs(self) -> str:
        drain_prefect_workers()  # the run's log lines are sent in batches
        body = {"logs": {"flow_run_id": {"any_": [self.run_id]}}}
        return "\n".join(line["message"] for line in call("POST", f"{self.api}/logs/filter", json=body))

    def finish(self) -> dict[str, Any]:
        self.thread.join(90)
        assert not self.thread.is_alive()
        return self._wait_for(lambda: (run := self.run())["state"]["type"] != "RUNNING" and run, "the final state")


@pytest.fixture
def store(local_store_factory) -> SecretStore:
    made = local_store_factory()
    made.create("value-0123456789")
    return made


def _has_event(api: str, run_id: str, name: str) -> None:
    """The run's state change emitted ``name``: what an automation matches."""
    query = {"filter": {"any_resource": {"id": [f"prefect.flow-run.{run_id}"]}}, "limit": 50}
    deadline = time.monotonic() + 30
    while name not in [e["event"] for e in call("POST", f"{api}/events/filter", json=query)["events"]]:
        assert time.monotonic() < deadline, f"no {name} event for flow run {run_id}"
        time.sleep(0.5)


def _rejected_and_rolled_back(paused: Paused, reason: str) -> None:
    run = paused.finish()
    assert (run["state"]["type"], run["state"]["name"]) == ("CANCELLED", "Rejected")
    message = run["state"]["message"]
    assert "\n" not in message and "bob rejected 'approve-promote'" in message and reason in message
    assert isinstance(paused.outcome["error"], RotationRolledBack)  # a caller of the flow still gets the exception
    assert paused.store.read() == "value-0123456789"
    assert Stage.PENDING not in {s for v in paused.store.describe().versions for s in v.stages}
    assert paused.journal.get(paused.record.id).state == "rolled-back"
    assert "Traceback" not in paused.logs()
    _has_event(paused.api, paused.run_id, "prefect.flow-run.Rejected")


def test_through_the_rest_api(prefect_server, store, tmp_path) -> None:
    journal = Journal(tmp_path / "journal.db")
    paused = Paused(prefect_server.api_url, store, journal)

    # What the approver sees: a short question naming the step and the secret, an artifact, a log line.
    question = paused.waits()[0]["question"]
    assert question == f"approve-promote of {store.uri.name}: Promote the value staged as abc123?"
    artifact = paused.artifact()
    for expected in (
        "approval-api",
        store.uri.display,
        "`approve-promote`",
        "`alice`",
        "Anyone but alice, who started the run (four eyes)",
        "**Approve**: the staged value becomes CURRENT",
        "**Reject**: the rotation is rolled back",
        f"rotate approve {paused.record.id}",
        f"/api/flow_runs/{paused.run_id}/resume",
    ):
        assert expected in artifact, expected
    logs = paused.logs()
    assert "Anyone but alice" in logs and f"rotate approve {paused.record.id}" in logs and "/resume" in logs
    assert f"/runs/flow-run/{paused.run_id}" in logs

    # Refused by the server, the run stays paused: a blank approver or reason, no decision, a yes/no toggle.
    for refused in (
        {"decision": "approve", "approver": "   ", "reason": "ok"},
        {"decision": "approve", "approver": "bob", "reason": " "},
        {"approver": "bob", "reason": "ok"},
        {"decision": True, "approver": "bob", "reason": "ok"},
    ):
        assert paused.resume(**refused) == "REJECT", refused
        assert paused.run()["state"]["type"] == "PAUSED"

    # Refused by the run: the person who started it, however spelled. Recorded, and the run asks again saying why.
    assert paused.resume(decision="approve", approver=" ALICE ", reason="mine") == "ACCEPT"
    paused.wait_paused(attempt=2)
    (refusal,) = [e.details for e in journal.events(paused.record.id) if e.status == "refused"]
    assert refusal["approver"] == " ALICE " and "four eyes" in refusal["reason"]
    assert "was refused" in paused.waits()[1]["question"] and "four eyes" in paused.waits()[1]["question"]
    assert "four eyes" in paused.artifact()
    assert store.read() == "value-0123456789"

    # A second person approves: the run completes and CURRENT changed.
    assert paused.resume(decision="approve", approver="bob", reason="change 42") == "ACCEPT"
    run = paused.finish()
    assert (run["state"]["type"], run["state"]["name"]) == ("COMPLETED", "Completed")
    assert store.read() == "value-0123456789-next"

    # A rejection ends the run Rejected, rolled back, with one line and no traceback.
    second = Paused(prefect_server.api_url, _fresh(store), journal)
    assert second.resume(decision="reject", approver="bob", reason="not during the release") == "ACCEPT"
    _rejected_and_rolled_back(second, "not during the release")


def _fresh(store: SecretStore) -> SecretStore:
    """Another secret in the same store file, with the first value."""
    from stores import open_store

    other = open_store(f"local://{store.uri.location}?secret={store.uri.name}-2")
    other.create("value-0123456789")
    return other


def _approve(journal: Journal, rotation_id: str, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["approve", rotation_id, *args, "--journal", str(journal.path)])
    return result.exit_code, " ".join(result.output.split())


def test_through_rotate_approve(prefect_server, store, tmp_path) -> None:
    journal = Journal(tmp_path / "journal.db")
    paused = Paused(prefect_server.api_url, store, journal)
    rid = paused.record.id

    code, output = _approve(journal, rid, "--approver", "   ", "--reason", "ok")
    assert code == 1 and output.startswith("error: --approver") and "blank" in output, output
    code, output = _approve(journal, rid, "--approver", "bob", "--reason", "")
    assert code == 1 and output.startswith("error: --reason") and "blank" in output, output
    assert len(paused.waits()) == 1 and paused.run()["state"]["type"] == "PAUSED"  # nothing was sent

    code, output = _approve(journal, rid, "--approver", "Alice", "--reason", "mine")
    assert code == 1, output
    assert output.startswith("error: the run refused the decision of Alice") and "four eyes" in output, output
    paused.wait_paused(attempt=2)

    code, output = _approve(journal, rid, "--approver", "bob", "--reason", "change 42")
    assert (code, output) == (0, f"approved: approve-promote of rotation {rid}, by bob"), output
    assert paused.finish()["state"]["name"] == "Completed"
    assert store.read() == "value-0123456789-next"

    code, output = _approve(journal, rid, "--approver", "bob", "--reason", "late")
    assert code == 1 and "is not waiting for an approval (completed)" in output, output

    second = Paused(prefect_server.api_url, _fresh(store), journal)
    code, output = _approve(journal, second.record.id, "--approver", "bob", "--reason", "not now", "--reject")
    assert (code, output) == (0, f"rejected: approve-promote of rotation {second.record.id}, by bob"), output
    _rejected_and_rolled_back(second, "not now")


def test_a_failed_verification_ends_rolled_back_and_a_bug_failed(prefect_server, store, tmp_path) -> None:
    journal = Journal(tmp_path / "journal.db")
    options = RotationOptions(journal=journal.location, approve_promote=False)
    state = promote_with_approval(store.uri.display, options, "fail-check", return_state=True)
    assert (state.type.value, state.name) == ("FAILED", "RolledBack")
    assert "\n" not in state.message and "was not accepted" in state.message and "rolled back" in state.message
    assert store.read() == "value-0123456789"
    _has_event(prefect_server.api_url, str(state.state_details.flow_run_id), "prefect.flow-run.RolledBack")
    with pytest.raises(RotationRolledBack, match="was not accepted"):
        promote_with_approval(store.uri.display, options, "fail-check")

    # A bug before the point of no return is rolled back too, and its traceback is logged for whoever fixes it.
    state = promote_with_approval(store.uri.display, options, "bug", return_state=True)
    assert (state.type.value, state.name) == ("FAILED", "RolledBack")
    assert "ZeroDivisionError" in state.message
    assert store.read() == "value-0123456789"

    # A failure after the point of no return stays Failed: one line, to be carried forward with `rotate resume`.
    state = promote_with_approval(store.uri.display, options, "fail-retire", return_state=True)
    assert (state.type.value, state.name) == ("FAILED", "Failed")
    assert "\n" not in state.message and "was not accepted" in state.message
    assert store.read() == "value-0123456789-next"
    (failed,) = [r for r in journal.list() if r.state == "failed"]
    assert failed.retired_at is not None


def test_nobody_deciding_in_time_ends_rejected(prefect_server, store, tmp_path) -> None:
    options = RotationOptions(started_by="alice", journal=str(tmp_path / "journal.db"), approval_timeout_seconds=2)
    state = promote_with_approval(store.uri.display, options, return_state=True)
    assert (state.type.value, state.name) == ("CANCELLED", "Rejected")
    assert "nobody approved 'approve-promote' within 2 s" in state.message
    assert store.read() == "value-0123456789"


def test_a_decision_reaches_the_run_through_a_busy_server(prefect_server, store, tmp_path) -> None:
    """A busy SQLite server answers resumes 503 again and again: Prefect's client gives up after six tries (about a
    minute of back-off); the decision must still land, within the time the run waits."""
    paused = Paused(prefect_server.api_url, store, Journal(tmp_path / "journal.db"))
    busy = BusyPrefectDouble(prefect_server.api_url, busy_resumes=8).start()
    decision = ApprovalDecision(
        decision="approve", approver="bob", reason="change 42", rotation_id=paused.record.id, step="approve-promote"
    )
    try:
        with temporary_settings(updates={PREFECT_API_URL: busy.api_url}):
            give_decision(paused.run_id, decision)
    finally:
        busy.stop()
    assert (busy.refused, busy.forwarded_resumes) == (8, 1)
    assert paused.finish()["state"]["name"] == "Completed"
    assert store.read() == "value-0123456789-next"
