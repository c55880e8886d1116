"""The ``rotate`` command line: the quick start, and bad input refused with one clear line and nothing changed."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.app import app
from rotation.journal import Journal, Lease
from stores import open_store
from tests.fixtures.ports import free_port

ROTATE = str(Path(sys.executable).parent / "rotate")


def test_the_quick_start_demo_rotates_the_example_service(prefect_server, tmp_path) -> None:
    demo = subprocess.run(
        [ROTATE, "demo", "--yes", "--dir", str(tmp_path / "demo"), "--grace", "2"],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    output = demo.stdout + demo.stderr
    assert demo.returncode == 0, output
    assert ": completed" in output
    assert "rejected (401)" in output  # the token issued before the rotation no longer works
    (record,) = Journal(tmp_path / "demo" / "journal.db").list()
    assert record.state == "completed"
    assert record.retired_at is not None
    listed = CliRunner().invoke(app, ["status", "--journal", str(tmp_path / "demo" / "journal.db")], terminal_width=80)
    assert listed.exit_code == 0 and record.id in listed.output and "completed" in listed.output
    trail = CliRunner().invoke(app, ["status", record.id, "--journal", str(tmp_path / "demo" / "journal.db")])
    assert trail.exit_code == 0 and "approved" in trail.output and "retire" in trail.output


def _bad(tmp_path: Path, *args: str) -> tuple[str, Journal]:
    journal = Journal(tmp_path / "journal.db")
    result = CliRunner().invoke(app, [*args, "--journal", str(journal.path), "--yes", "--approver", "bob"])
    assert result.exit_code == 1, result.output
    assert result.output.startswith("error:"), result.output
    assert "Traceback" not in result.output
    assert journal.list() == []  # no rotation was started
    return " ".join(result.output.split()), journal


def test_an_unknown_store_scheme(prefect_server, tmp_path) -> None:
    message, _ = _bad(tmp_path, "jwt", "ftp://host/secret")
    assert "unknown store scheme 'ftp'" in message
    assert "local, aws, vault, k8s, azure, gcp" in message


def test_a_missing_secret(prefect_server, tmp_path) -> None:
    uri = f"local://{tmp_path}/store.db?secret=nope"
    message, _ = _bad(tmp_path, "jwt", uri)
    assert "nope" in message
    assert ("not" in message and "exist" in message) or "not found" in message


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('{"keys": []}', "signing key"),
        ("{not json", "JSON"),
        ("tooshort", "256 bits"),
    ],
    ids=["no-signing-key", "not-json", "short-key"],
)
def test_a_malformed_keyset_changes_nothing(prefect_server, local_store_factory, tmp_path, value, expected) -> None:
    store = local_store_factory()
    store.create(value)
    before = store.describe()
    message, _ = _bad(tmp_path, "jwt", store.uri.display)
    assert expected in message
    assert value not in message
    assert store.describe() == before


def test_a_key_shorter_than_256_bits_is_refused(prefect_server, local_store_factory, tmp_path) -> None:
    store = local_store_factory()
    store.create('{"keys": []}')
    message, _ = _bad(tmp_path, "jwt", store.uri.display, "--bits", "128")
    assert "key_bits" in message and "256" in message


def test_an_unreachable_aws_endpoint(prefect_server, moto_server, tmp_path) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    message, _ = _bad(tmp_path, "jwt", f"aws://auth/jwt?region=us-east-1&endpoint_url={endpoint}")
    assert endpoint in message


def test_describe_shows_stages_and_never_the_value(local_store_factory) -> None:
    store = local_store_factory()
    store.create("canary-describe-0123456789abcdef")
    result = CliRunner().invoke(app, ["describe", store.uri.display])
    assert result.exit_code == 0, result.output
    assert "CURRENT" in result.output
    assert "canary-describe" not in result.output
    assert open_store(store.uri.display).read() == "canary-describe-0123456789abcdef"


def test_postgres_with_a_malformed_secret(prefect_server, local_store_factory, tmp_path) -> None:
    store = local_store_factory()
    store.create('{"engine": "postgres", "host": "127.0.0.1", "username": "app"')
    before = store.describe()
    message, _ = _bad(tmp_path, "postgres", store.uri.display)
    assert "JSON" in message
    assert store.describe() == before


def test_redis_with_an_unreachable_node(prefect_server, local_store_factory, tmp_path) -> None:
    port = free_port()
    app, admin = local_store_factory(), local_store_factory()
    app.create(f'{{"host": "127.0.0.1", "port": {port}, "username": "app", "password": "app-password-0123456789"}}')
    admin.create('{"username": "admin", "password": "admin-password-0123456789"}')
    message, _ = _bad(tmp_path, "redis", app.uri.display, "--admin-secret", admin.uri.display)
    assert f"127.0.0.1:{port}" in message
    assert "app-password" not in message and "admin-password" not in message


def test_status_does_not_call_a_run_stopped_until_it_is_a_lease_length_late(tmp_path, monkeypatch) -> None:
    """An expired lease alone may be a run renewing late on a busy machine: the status says what is known. The run
    counts as stopped once it has not renewed for a whole lease length (ROTATE_LEASE_SECONDS) past its expiry."""
    journal = Journal(tmp_path / "journal.db")
    lease = Lease.new(str(uuid.uuid4()), "run-1", seconds=0.05)
    journal.begin(
        secret="local:///srv/store.db?secret=a", runbook="jwt-signing-key", started_by="alice", parameters={},
        consumers=[], versions={}, lease=lease,
    )  # fmt: skip

    def status() -> str:
        shown = CliRunner().invoke(app, ["status", lease.rotation_id, "--journal", journal.location])
        assert shown.exit_code == 0, shown.output
        return " ".join(shown.output.split())

    time.sleep(0.1)  # expired
    monkeypatch.setenv("ROTATE_LEASE_SECONDS", "3600")  # late by less than a lease length
    assert "its run's lease expired at" in status() and "it has stopped, or is too slow to renew it" in status()
    monkeypatch.setenv("ROTATE_LEASE_SECONDS", "0.05")  # late by more
    assert "running, its run has stopped" in status()
