"""Approval through the REST API, as the UI's Resume button and scripts give it: every decision field is required."""

from __future__ import annotations

import threading
import time

import httpx
from prefect import flow
from prefect.runtime import flow_run

from rotation.approval import ApprovalDecision, request_approval

started: dict[str, str] = {}


@flow(persist_result=False)
def needs_approval() -> dict:
    started["id"] = str(flow_run.id)
    decision: ApprovalDecision = request_approval(
        "Promote?", key="promote", started_by="alice", timeout_seconds=60, allow_self_approval=False, poll_seconds=1
    )
    return decision.model_dump()


def _paused(api: str, run_id: str) -> bool:
    return httpx.get(f"{api}/flow_runs/{run_id}", timeout=5).json()["state"]["type"] == "PAUSED"


def test_an_incomplete_decision_is_refused_and_the_run_stays_paused(prefect_server) -> None:
    api = prefect_server.api_url
    answers: list[tuple[dict, str]] = []

    def approver() -> None:
        while "id" not in started or not _paused(api, started["id"]):
            time.sleep(0.2)
        for run_input in ({}, {"approved": True}, {"approved": True, "approver": "bob", "reason": 7}):
            status = httpx.post(f"{api}/flow_runs/{started['id']}/resume", json={"run_input": run_input}, timeout=10)
            answers.append((run_input, status.json()["status"]))
            assert _paused(api, started["id"])
        full = {"approved": True, "approver": "bob", "reason": "change 42"}
        answers.append(
            (full, httpx.post(f"{api}/flow_runs/{started['id']}/resume", json={"run_input": full}).json()["status"])
        )

    thread = threading.Thread(target=approver, daemon=True)
    thread.start()
    decision = needs_approval()
    thread.join(10)
    assert [status for _, status in answers] == ["REJECT", "REJECT", "REJECT", "ACCEPT"]
    assert decision == {"approved": True, "approver": "bob", "reason": "change 42"}
