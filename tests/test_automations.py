"""People hear of rotations through a notification block: the automations of deployments/automations.py, installed
on the session's real Prefect server (``prefect server start``: its trigger, action and late-runs services run), post
to a local HTTP server when a run waits for approval, when a rotation is rolled back, and when a grace period's
follow-up run did not start on time."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prefect import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.states import Scheduled

from deployments.automations import install, webhook_block
from flows.jwt import JwtPolicy, rotate_jwt_signing_key
from rotation import RotationOptions
from rotation.approval import ApprovalDecision, give_decision
from rotation.journal import Journal
from stores import Stage
from targets.jwt.keyset import JwtKeyset, new_key

ROOT = Path(__file__).resolve().parents[1]


class Inbox:
    """What the notification block posted: one JSON document (subject, body) per notification."""

    def __init__(self) -> None:
        self.received: list[dict[str, str]] = []
        self._lock = threading.Lock()

    def wait_for(self, subject: str, mentioning: str, timeout: float = 60) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                for message in self.received:
                    if message.get("subject") == subject and mentioning in message.get("body", ""):
                        return message
            time.sleep(0.2)
        raise AssertionError(f"no notification {subject!r} mentioning {mentioning!r}; received {self.received}")


@pytest.fixture
def inbox(prefect_server) -> Iterator[Inbox]:
    inbox = Inbox()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with inbox._lock:
                inbox.received.append(json.loads(body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    install(webhook_block(f"http://127.0.0.1:{server.server_address[1]}/notify"))
    try:
        yield inbox
    finally:
        install()  # the session's server keeps only the automation without notifications
        server.shutdown()


def _flow_run_name(flow_run_id: str) -> str:
    with get_client(sync_client=True) as client:
        return client.read_flow_run(uuid.UUID(flow_run_id)).name


def test_a_paused_run_and_a_rollback_are_notified(inbox: Inbox, local_store_factory, tmp_path) -> None:
    store = local_store_factory()
    store.create(JwtKeyset(keys=[new_key("HS256", 512)]).to_secret())
    journal = Journal(tmp_path / "journal.db")
    options = RotationOptions(started_by="alice", journal=journal.location, approval_timeout_seconds=120)
    outcome: dict[str, BaseException] = {}

    def run() -> None:
        try:
            rotate_jwt_signing_key(store.uri.display, policy=JwtPolicy(token_lifetime_seconds=0), options=options)
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not (active := journal.list(active_only=True)) or not active[0].flow_run_id:
        assert time.monotonic() < deadline, "the rotation did not start"
        time.sleep(0.2)
    record = active[0]
    paused = inbox.wait_for("secret rotation: a run waits for approval", _flow_run_name(record.flow_run_id))
    assert record.flow_run_id in paused["body"]  # which run to answer

    decision = ApprovalDecision(
        decision="reject", approver="bob", reason="not today", rotation_id=record.id, step="approve-promote"
    )
    for _ in range(40):  # the journal says "waiting" a moment before the server has the run paused
        try:
            give_decision(record.flow_run_id, decision)
            break
        except Exception:
            time.sleep(0.25)
    thread.join(60)
    assert "error" in outcome  # rolled back: the run did not complete
    rolled_back = inbox.wait_for("secret rotation: a rotation is rolled back", record.id)
    assert "not today" in rolled_back["body"]
    assert [v for v in store.describe().versions if Stage.PENDING in v.stages] == []


def test_a_late_follow_up_run_is_notified(inbox: Inbox) -> None:
    pool = f"no-worker-{uuid.uuid4().hex[:8]}"  # nobody polls it: the run cannot start
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
    deployment_id = rotate_jwt_signing_key.from_source(str(ROOT), "flows/jwt.py:rotate_jwt_signing_key").deploy(
        name=f"jwt-{pool}", work_pool_name=pool, build=False, print_next_steps=False
    )
    name = f"resume-{uuid.uuid4().hex[:8]}-after-grace"
    with get_client(sync_client=True) as client:
        client.create_flow_run_from_deployment(
            deployment_id,
            parameters={"secret": "local:///nowhere/store.db?secret=jwt"},
            name=name,
            state=Scheduled(scheduled_time=datetime.now(UTC) - timedelta(minutes=2)),
        )
    late = inbox.wait_for("secret rotation: a grace period's follow-up run is late", name, timeout=90)
    assert "has not started" in late["body"]
