"""The SMTP runbook's tasks on the hand-set path, against real SMTP servers (called as plain functions, no flow).

The test plays the person at the provider: it changes the user's password on the server, then stages the new
value as ``rotate stage`` will (the current secret with the entered password), and the tasks verify it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from errors import CheckFailed, PermissionDenied, Unreachable
from stores import SecretStore, Stage
from targets.smtp.credential import SmtpSecretInvalid, with_new_password
from targets.smtp.login import LoginRefused, TlsFailed
from tasks.smtp import (
    inspect_smtp_secret,
    report_password_window,
    send_smtp_test_message,
    smtp_login_accepted,
    smtp_login_refused,
)
from tests.fixtures.ports import free_port
from tests.fixtures.smtp_server import SmtpServer
from tests.leaks import canary, error_text

Servers = Callable[..., SmtpServer]


def _secret(factory: Callable[[], SecretStore], value: str) -> tuple[SecretStore, str]:
    store = factory()
    return store, store.create(value)


def _provider(start: Servers, factory: Callable[[], SecretStore], tls: str) -> tuple[SmtpServer, SecretStore, str, str]:
    """A server whose user ``app`` has a password, and a secret holding it: (server, store, password, version)."""
    server = start(tls)
    password = canary()
    server.set_password("app", password)
    store, version = _secret(factory, server.secret("app", password))
    return server, store, password, version


def _stage_by_hand(store: SecretStore, password: str) -> str:
    """What `rotate stage` does with the password a person entered; returns the rotation id."""
    rotation_id = str(uuid.uuid4())
    store.stage(with_new_password(store.read(Stage.CURRENT), password), rotation_id)
    return rotation_id


def _nothing_changed(store: SecretStore, version: str) -> None:
    assert [(v.version_id, v.stages) for v in store.describe().versions] == [(version, (Stage.CURRENT,))]


@pytest.mark.parametrize("tls", ["starttls", "implicit"])
def test_a_hand_set_rotation_on_a_single_password_provider(
    smtp_servers: Servers, local_store_factory: Callable[[], SecretStore], tls: str, record_property
) -> None:
    server, store, _, old_version = _provider(smtp_servers, local_store_factory, tls)
    new = canary()
    uri = store.uri.display

    plan = inspect_smtp_secret.fn(uri)
    assert (plan.path, plan.username, plan.current_version) == ("hand-set", "app", old_version)
    assert plan.login.accepted and plan.login.tls_version.startswith("TLSv1.")

    server.set_password("app", new)  # the person changes it in the provider's console...
    changed_at = datetime.now(UTC)
    rotation_id = _stage_by_hand(store, new)  # ...and stages it
    assert smtp_login_accepted.fn(uri, rotation_id).accepted
    store.promote(rotation_id)
    window = report_password_window.fn(uri, rotation_id, old_version, plan.checked_at.isoformat())
    actual = (window.measured_at - changed_at).total_seconds()  # from the change at the provider to promotion
    assert window.single_password
    assert window.at_least_seconds is not None and window.at_most_seconds is not None
    assert window.at_least_seconds <= actual <= window.at_most_seconds
    record_property("single_password_window_s", f"{window.at_least_seconds:.3f}..{window.at_most_seconds:.3f}")
    assert not smtp_login_refused.fn(uri, old_version).accepted
    assert json.loads(store.read(Stage.CURRENT))["password"] == new


def test_a_provider_with_two_passwords_has_no_window(
    smtp_servers: Servers, local_store_factory: Callable[[], SecretStore]
) -> None:
    server, store, old, old_version = _provider(smtp_servers, local_store_factory, "starttls")
    new = canary()
    server.add_password("app", new)
    rotation_id = _stage_by_hand(store, new)
    store.promote(rotation_id)
    window = report_password_window.fn(store.uri.display, rotation_id, old_version)
    assert not window.single_password and window.at_least_seconds is None
    # Revoking the old one is the person's job; until they have, the check says so.
    with pytest.raises(CheckFailed, match="still accepts the login"):
        smtp_login_refused.fn(store.uri.display, old_version)
    server.remove_password("app", old)
    assert not smtp_login_refused.fn(store.uri.display, old_version).accepted


def test_a_wrong_staged_password_is_refused(
    smtp_servers: Servers, local_store_factory: Callable[[], SecretStore]
) -> None:
    _, store, old, _ = _provider(smtp_servers, local_store_factory, "implicit")
    typo = canary()
    rotation_id = _stage_by_hand(store, typo)
    with pytest.raises(LoginRefused, match=r"refused the login .*check the staged secret") as caught:
        smtp_login_accepted.fn(store.uri.display, rotation_id)
    assert isinstance(caught.value, PermissionDenied) and not isinstance(caught.value, Unreachable)
    assert typo not in error_text(caught.value) and old not in error_text(caught.value)


def test_send_test_message_through_the_staged_credential(
    smtp_servers: Servers, local_store_factory: Callable[[], SecretStore]
) -> None:
    server = smtp_servers("starttls")
    password = canary()
    server.set_password("mailer", password)
    store, version = _secret(local_store_factory, server.secret("mailer", password))
    sent = send_smtp_test_message.fn(store.uri.display, version, "rotation@example.com", "ops@example.com")
    assert [m.rcpt_tos for m in server.messages] == [["ops@example.com"]]
    assert sent.message_id.encode() in server.messages[0].content


def test_an_unreachable_server_changes_nothing(local_store_factory: Callable[[], SecretStore]) -> None:
    password = canary()
    value = {"host": "127.0.0.1", "port": free_port(), "tls": "implicit", "username": "app", "password": password}
    store, version = _secret(local_store_factory, json.dumps(value))
    with pytest.raises(Unreachable, match=r"smtps://127\.0\.0\.1:\d+ .*is unreachable") as caught:
        inspect_smtp_secret.fn(store.uri.display)
    assert password not in error_text(caught.value)
    _nothing_changed(store, version)


def test_a_certificate_that_does_not_verify_changes_nothing(
    smtp_servers: Servers, local_store_factory: Callable[[], SecretStore], other_ca: Path
) -> None:
    server = smtp_servers("starttls")
    password = canary()
    server.set_password("app", password)
    store, version = _secret(local_store_factory, server.secret("app", password, ca_file=str(other_ca)))
    with pytest.raises(TlsFailed, match="certificate did not verify") as caught:
        inspect_smtp_secret.fn(store.uri.display)
    assert isinstance(caught.value, CheckFailed)
    assert server.logins == []
    _nothing_changed(store, version)


def test_a_secret_that_is_not_smtp_is_named(local_store_factory: Callable[[], SecretStore]) -> None:
    password = canary()
    store, version = _secret(local_store_factory, json.dumps({"host": "mail", "tls": "none", "password": password}))
    with pytest.raises(SmtpSecretInvalid) as caught:
        inspect_smtp_secret.fn(store.uri.display)
    assert str(caught.value) == (
        f"version {version} of {store.uri.display} is not an SMTP credential: tls is 'none': this runbook never "
        "sends a login without TLS; use starttls or implicit"
    )
    assert password not in error_text(caught.value)
    _nothing_changed(store, version)
