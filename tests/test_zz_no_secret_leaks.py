"""After the suite's rotations: no secret value anywhere in the Prefect database, its storage, its logs or the journal.

Every value a task handled was registered for redaction, and each is looked for here, beside a canary rotated by this
test itself. Named to run last in a single process; under several workers each worker's server is also scanned when
its session ends (``tests/fixtures/prefect.py``), so what later tests leave behind is checked too.
"""

from __future__ import annotations

import logging
import secrets
import time
from pathlib import Path

import pytest
from pydantic import SecretStr

import redaction
from flows.jwt import JwtPolicy, rotate_jwt_signing_key
from rotation.context import RotationOptions, RotationRolledBack
from rotation.journal import Journal
from targets.consumers import Consumer, HttpReload, NoRestart
from targets.http import http_client
from targets.jwt.keyset import JwtKey, JwtKeyset, hs_kid
from tests.fixtures.prefect import drain_prefect_workers

CANARY = "CANARY" + secrets.token_hex(40)


def _files(*roots: Path) -> list[Path]:
    found: list[Path] = []
    for root in roots:
        found.extend(p for p in ([root] if root.is_file() else root.rglob("*")) if p.is_file())
    return found


def test_the_redaction_filter_scrubs_log_records(caplog: pytest.LogCaptureFixture) -> None:
    value = "redact-me-" + secrets.token_hex(16)
    redaction.register_secret(value)
    with caplog.at_level(logging.INFO):
        logging.getLogger("secret-rotation.test").info("the value is %s", value)
        try:
            raise RuntimeError(f"failed with {value}")
        except RuntimeError:
            logging.getLogger("secret-rotation.test").exception("oops")
    text = caplog.text + "".join(r.exc_text or "" for r in caplog.records)
    assert value not in text
    assert "the value is ***" in text
    assert "failed with ***" in text


def test_no_secret_value_reaches_prefect_or_the_journal(
    prefect_server, local_store_factory, auth_service, tmp_path
) -> None:
    store = local_store_factory()
    key = JwtKey(kid=hs_kid(CANARY), alg="HS256", status="signing", k=SecretStr(CANARY))
    store.create(JwtKeyset(keys=[key]).to_secret())
    service = auth_service(store.uri.display)
    journal = Journal(tmp_path / "journal.db")
    options = RotationOptions(approve_promote=False, journal=str(journal.path))
    base = service.base_url
    reload = Consumer(name="auth", restart=HttpReload(url=f"{base}/reload"), verify_url=f"{base}/me")
    broken = Consumer(name="broken", restart=NoRestart(), verify_url=f"{base}/nowhere")
    policy = JwtPolicy(token_lifetime_seconds=1, grace_seconds=0)
    with pytest.raises(RotationRolledBack):
        rotate_jwt_signing_key(store.uri.display, consumers=[reload, broken], policy=policy, options=options)
    summary = rotate_jwt_signing_key(store.uri.display, consumers=[reload], policy=policy, options=options)
    assert summary["state"] == "completed"
    drain_prefect_workers()

    values = {v for v in redaction._secrets if len(v) >= 20}
    assert CANARY in values
    assert len(values) > 3  # the new keys of this test at least, and whatever earlier tests handled
    database = prefect_server.database_file()
    scanned = _files(prefect_server.home, journal.path.parent, service.log_path)
    assert database in scanned
    leaks = []
    for path in scanned:
        data = path.read_bytes()
        leaks += [f"{path} holds a secret value" for v in values if v.encode() in data]
    assert leaks == []

    query = {
        "filter": {
            "event": {"prefix": ["secret-rotation.step."]},
            "any_resource": {"id_prefix": [f"secret-rotation.rotation.{summary['rotation_id']}"]},
        },
        "limit": 50,
    }
    deadline = time.monotonic() + 60
    while True:  # the server stores events a moment after it receives them
        events = http_client().post(f"{prefect_server.api_url}/events/filter", json=query, timeout=10).json()["events"]
        outcomes = {(e["resource"]["step"], e["event"]) for e in events}
        if ("rotation", "secret-rotation.step.completed") in outcomes or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert {("rotation", "secret-rotation.step.started"), ("rotation", "secret-rotation.step.completed")} <= outcomes
    assert all(set(e["payload"]) <= {"runbook", "reason"} for e in events)  # names and reasons, never facts
