"""The SMTP credentials runbook (flows/smtp.py) end to end, through ``rotate smtp`` and ``rotate stage``.

Set by hand: real SMTP servers (aiosmtpd, a test CA) that require AUTH over STARTTLS or implicit TLS; the test plays
the person at the provider, who changes the password in the console and enters it on ``rotate stage``'s standard
input. Amazon SES: moto_server's IAM and an SMTP double that accepts a key's password as SES does
(tests/fixtures/ses.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cli.app import app
from rotation.journal import Journal, RotationState
from stores import SecretStore, Stage
from tests.fixtures.ports import free_port
from tests.fixtures.ses import SesAccount
from tests.fixtures.smtp_server import SmtpServer
from tests.leaks import canary

ROTATE = str(Path(sys.executable).parent / "rotate")
Servers = Callable[..., SmtpServer]


def _stages(store: SecretStore) -> list[tuple[str, tuple[str, ...]]]:
    return [(v.version_id, v.stages) for v in store.describe().versions if v.stages]


def _start(journal: Journal, *args: str) -> subprocess.Popen[str]:
    """``rotate smtp ...`` in its own process, as an operator starts it (no terminal: approvals come from --yes)."""
    return subprocess.Popen(
        [ROTATE, "smtp", *args, "--journal", journal.location, "--yes", "--approver", "bob"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )


def _step_started(journal: Journal, step: str, run: subprocess.Popen[str], timeout: float = 300) -> str:
    """The id of the rotation once its step ``step`` has started (while ``run`` goes on)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and run.poll() is None:
        for record in journal.list() if journal.path.exists() else []:
            if step in journal.steps(record.id):
                return record.id
        time.sleep(0.1)
    run.kill()
    trail = [(e.step, e.status, e.details) for r in journal.list() for e in journal.events(r.id)]
    raise AssertionError(f"no rotation reached step {step}: {run.communicate()[0]}\n{trail}")


def _stage(journal: Journal, rotation_id: str, password: str) -> Any:
    """``rotate stage ROTATION_ID`` with the password on standard input, as a person pipes it in."""
    return CliRunner().invoke(
        app, ["stage", rotation_id, "--person", "carol", "--journal", journal.location], input=password + "\n"
    )


def _summary(output: str) -> dict[str, Any]:
    return json.loads(output[output.index("{") : output.rindex("}") + 1])


@pytest.mark.timeout(900)  # a `rotate smtp` process beside the suite's other workers, on two cores
@pytest.mark.parametrize("tls", ["starttls", "implicit"])
def test_a_password_set_by_hand_and_staged_on_standard_input(
    prefect_server, smtp_servers: Servers, local_store_factory, tmp_path: Path, tls: str, record_property
) -> None:
    server = smtp_servers(tls)
    old, new = canary(), canary()
    server.set_password("app", old)
    store = local_store_factory()
    old_version = store.create(server.secret("app", old))
    journal = Journal(tmp_path / "journal.db")
    # STARTTLS: a provider with one password per user. Implicit TLS: one that keeps the old one until revoked.
    single = tls == "starttls"
    run = _start(journal, store.uri.display, "--grace", "0.5", "--revoke-wait", "30")

    rotation_id = _step_started(journal, "new-password", run)
    (server.set_password if single else server.add_password)("app", new)  # the person, in the provider's console
    staged = _stage(journal, rotation_id, new)
    assert staged.exit_code == 0, staged.output
    assert f"for rotation {rotation_id}" in staged.output and new not in staged.output
    assert f"approved: new-password of rotation {rotation_id}, by carol" in staged.output, staged.output
    if not single:
        _step_started(journal, "old-password-revoked", run)  # asked (approved with --yes), the person revokes it
        server.remove_password("app", old)
    output, _ = run.communicate(timeout=600)
    assert run.returncode == 0, output

    summary = _summary(output)
    assert (summary["state"], summary["path"]) == ("completed", "hand-set")
    assert json.loads(store.read(Stage.CURRENT))["password"] == new
    assert store.describe().version_at(Stage.CURRENT) == rotation_id
    assert store.describe().version_at(Stage.PREVIOUS) == old_version
    window = summary["password_window"]
    assert window["single_password"] is single
    if single:  # measured between the last login with the old password and the staging, up to the promotion
        assert 0 < window["at_least_seconds"] <= window["at_most_seconds"] < 60
        measured = f"{window['at_least_seconds']:.2f}..{window['at_most_seconds']:.2f}"
        record_property("single_password_window_s", measured)
    steps = journal.steps(rotation_id)
    assert ("approve-revoke-old-password" in steps) is not single
    assert steps["old-password-revoked"].facts["accepted"] is False
    # The current login was checked, the staged one worked at its first try; it reached neither journal nor output.
    assert server.logins[:2] == [("app", True), ("app", True)]
    assert new not in json.dumps(journal.get(rotation_id).parameters) and new not in output
    assert new not in journal.path.read_bytes().decode(errors="replace")


@pytest.mark.timeout(900)
def test_a_wrong_staged_password_rolls_back(
    prefect_server, smtp_servers: Servers, local_store_factory, tmp_path: Path
) -> None:
    server = smtp_servers("starttls")
    old, typo = canary(), canary()
    server.set_password("app", old)
    store = local_store_factory()
    store.create(server.secret("app", old))
    before = _stages(store)
    journal = Journal(tmp_path / "journal.db")
    run = _start(journal, store.uri.display)
    rotation_id = _step_started(journal, "new-password", run)
    assert _stage(journal, rotation_id, typo).exit_code == 0
    output, _ = run.communicate(timeout=600)

    assert run.returncode == 1, output
    assert "rolled back" in output and "refused the login" in output and typo not in output
    assert journal.get(rotation_id).state is RotationState.ROLLED_BACK
    assert _stages(store) == before and json.loads(store.read())["password"] == old
    assert server.logins.count(("app", False)) == 1  # one try: a typo counts once towards a provider's lockout
    assert server.accepts("app", old)


def _refused(tmp_path: Path, *args: str) -> str:
    """``rotate smtp`` refuses: exit status 1, one line saying why, no rotation started."""
    journal = Journal(tmp_path / "journal.db")
    result = CliRunner().invoke(app, ["smtp", *args, "--journal", journal.location, "--yes", "--approver", "bob"])
    assert result.exit_code == 1, result.output
    assert result.output.startswith("error:") and "Traceback" not in result.output, result.output
    assert journal.list() == []
    return " ".join(result.output.split())


def test_an_unreachable_server_is_one_line_and_changes_nothing(prefect_server, local_store_factory, tmp_path) -> None:
    password, port = canary(), free_port()
    store = local_store_factory()
    value = {"host": "127.0.0.1", "port": port, "tls": "starttls", "username": "app", "password": password}
    store.create(json.dumps(value))
    before = _stages(store)
    message = _refused(tmp_path, store.uri.display)
    assert f"smtp+starttls://127.0.0.1:{port}" in message and "is unreachable" in message
    assert password not in message
    assert _stages(store) == before


def test_a_certificate_that_does_not_verify_is_one_line_and_changes_nothing(
    prefect_server, smtp_servers: Servers, local_store_factory, other_ca: Path, tmp_path
) -> None:
    server = smtp_servers("implicit")
    password = canary()
    server.set_password("app", password)
    store = local_store_factory()
    store.create(server.secret("app", password, ca_file=str(other_ca)))
    before = _stages(store)
    message = _refused(tmp_path, store.uri.display)
    assert "certificate did not verify" in message and "TLS is never turned off" in message
    assert server.logins == [] and _stages(store) == before


def test_bad_policy_input_is_one_line(prefect_server, local_store_factory, tmp_path) -> None:
    store = local_store_factory()
    message = _refused(tmp_path, store.uri.display, "--test-recipient", "not-an-address")
    assert "test_recipient" in message


def test_an_ses_rotation_with_a_test_message(prefect_server, ses_accounts: Callable[[], SesAccount], tmp_path) -> None:
    ses = ses_accounts()
    ses.propagation_seconds = 1  # SES learns the new key a moment after IAM made it: the runbook asks again
    journal = Journal(tmp_path / "journal.db")
    result = CliRunner().invoke(
        app,
        [
            "smtp", ses.uri, "--grace", "0.5", "--delete-after", "0.5", "--propagation", "30",
            "--test-recipient", "ops@example.com", "--journal", journal.location, "--yes", "--approver", "bob",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = _summary(result.output)
    new_key = summary["new_access_key"]
    assert (summary["state"], summary["path"], summary["old_access_key"]) == ("completed", "ses", ses.old_key)
    assert ses.keys() == {new_key: "Active"}  # the old key was deactivated, then deleted
    current = json.loads(ses.store.read())
    assert current["username"] == new_key and current["ses"]["iam_user"] == ses.iam_user
    assert ses.works() and not ses.works(ses.old_version)
    assert [m.rcpt_tos for m in ses.server.messages] == [["ops@example.com"]]
    steps = journal.steps(summary["rotation_id"])
    assert steps["new-login-works"].facts["attempts"] >= 2  # refused while SES did not know the key yet
    assert steps["deactivate-old-key"].facts["changed"] and steps["delete-old-key"].facts["changed"]


def test_an_ses_user_at_the_two_key_limit_is_refused_before_any_change(
    prefect_server, ses_accounts: Callable[[], SesAccount], tmp_path
) -> None:
    ses = ses_accounts()
    other = ses.iam().create_access_key(UserName=ses.iam_user)["AccessKey"]["AccessKeyId"]
    before = (ses.keys(), _stages(ses.store))
    message = _refused(tmp_path, ses.uri)
    assert "already has 2 access keys, the most IAM allows" in message and other in message
    assert (ses.keys(), _stages(ses.store)) == before


def test_an_ses_rotation_that_fails_verification_deletes_the_key_it_created(
    prefect_server, ses_accounts: Callable[[], SesAccount], tmp_path
) -> None:
    ses = ses_accounts()
    ses.propagation_seconds = 3600  # SES never accepts the new key in time
    before = (ses.keys(), _stages(ses.store))
    journal = Journal(tmp_path / "journal.db")
    result = CliRunner().invoke(
        app, ["smtp", ses.uri, "--propagation", "0", "--journal", journal.location, "--yes", "--approver", "bob"]
    )
    assert result.exit_code == 1, result.output
    assert "rolled back" in result.output and "refused the login" in result.output
    (record,) = journal.list()
    assert record.state is RotationState.ROLLED_BACK
    created = journal.steps(record.id)["create-access-key"].facts["access_key_id"]
    assert created not in ses.keys()  # noqa: SIM118 - IAM's list, not a dict's keys
    assert (ses.keys(), _stages(ses.store)) == before and ses.works()
