"""Approval through the REST API, as the UI's Resume button and scripts give it: every decision field is required,
blank is not a name, and a decision is for one rotation at one step."""

from __future__ import annotations

import threading
import time

from prefect import flow

from rotation import RotationOptions, rotation, runbook
from rotation.journal import Journal
from tests.prefect_api import resume, run_state


@runbook("approval-only")
@flow(persist_result=False)
def needs_approval(secret: str, options: RotationOptions) -> dict:
    with rotation(secret, options) as r:
        facts = r.approve("go-ahead", "Go ahead?")
    return {"rotation_id": r.id, **facts.model_dump(mode="json")}


def _paused(api: str, run_id: str) -> bool:
    return run_state(api, run_id) == "PAUSED"


def test_an_incomplete_blank_or_misaddressed_decision_is_refused_and_the_run_stays_paused(
    prefect_server, local_store_factory, tmp_path
) -> None:
    api = prefect_server.api_url
    store = local_store_factory()
    store.create("value-0123456789")
    journal = Journal(tmp_path / "journal.db")
    options = RotationOptions(started_by="alice", journal=journal.location, approval_timeout_seconds=60)
    answers: list[tuple[str, str]] = []

    def approver() -> None:
        while not (active := journal.list(active_only=True)) or not _paused(api, active[0].flow_run_id or ""):
            time.sleep(0.2)
        record = active[0]
        address = {"rotation_id": record.id, "step": "go-ahead"}
        for label, run_input in [
            ("empty", {}),
            ("no approver or reason", {"decision": "approve", **address}),
            ("a reason that is not text", {"decision": "approve", "approver": "bob", "reason": 7, **address}),
            ("a yes/no toggle", {"decision": True, "approver": "bob", "reason": "ok", **address}),
            ("a blank approver", {"decision": "approve", "approver": "   ", "reason": "ok", **address}),
            ("a blank reason", {"decision": "approve", "approver": "bob", "reason": " ", **address}),
        ]:
            answers.append((label, resume(api, record.flow_run_id, run_input)))
            assert _paused(api, record.flow_run_id), label
        full = {"decision": "approve", "approver": "bob", "reason": "change 42", **address}
        answers.append(("complete", resume(api, record.flow_run_id, full)))

    thread = threading.Thread(target=approver, daemon=True)
    thread.start()
    facts = needs_approval(store.uri.display, options)
    thread.join(10)
    assert [status for _, status in answers] == ["REJECT"] * 6 + ["ACCEPT"], answers
    assert (facts["decision"], facts["approver"], facts["reason"]) == ("approve", "bob", "change 42")


def test_a_decision_for_another_step_or_the_starter_is_refused_and_recorded(
    prefect_server, local_store_factory, tmp_path
) -> None:
    api = prefect_server.api_url
    store = local_store_factory()
    store.create("value-0123456789")
    journal = Journal(tmp_path / "journal.db")
    options = RotationOptions(started_by="alice", journal=journal.location, approval_timeout_seconds=60)

    def approver() -> None:
        while not (active := journal.list(active_only=True)) or not _paused(api, active[0].flow_run_id or ""):
            time.sleep(0.2)
        record = active[0]
        for run_input in (
            {"decision": "approve", "approver": "bob", "reason": "r", "rotation_id": record.id, "step": "other"},
            {
                "decision": "approve",
                "approver": " ALICE ",
                "reason": "mine",
                "rotation_id": record.id,
                "step": "go-ahead",
            },
            {"decision": "approve", "approver": "bob", "reason": "ok", "rotation_id": record.id, "step": "go-ahead"},
        ):
            # Each refusal pauses the run again: send the next decision once that pause is there.
            while resume(api, record.flow_run_id, run_input) != "ACCEPT":
                time.sleep(0.2)

    thread = threading.Thread(target=approver, daemon=True)
    thread.start()
    facts = needs_approval(store.uri.display, options)
    thread.join(10)
    assert facts["approver"] == "bob"
    refusals = [e.details for e in journal.events(facts["rotation_id"]) if e.status == "refused"]
    assert [r["approver"] for r in refusals] == ["bob", " ALICE "]
    assert "meant for step 'other'" in refusals[0]["reason"]
    assert "four eyes" in refusals[1]["reason"]
