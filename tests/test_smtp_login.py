"""SMTP logins against real servers requiring AUTH over TLS: verified TLS in both modes, and each failure named."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from errors import CheckFailed, PermissionDenied, Unreachable
from targets.smtp.credential import SmtpSecretInvalid, parse_credential, with_new_password
from targets.smtp.login import (
    LoginRefused,
    ServerUnreachable,
    SmtpCheckFailed,
    TlsFailed,
    check_login,
    send_test_message,
)
from tests.fixtures.ports import free_port
from tests.fixtures.smtp_server import SmtpServer
from tests.leaks import canary, error_text

Servers = Callable[..., SmtpServer]


@pytest.mark.parametrize("tls", ["starttls", "implicit"])
def test_login_over_verified_tls(smtp_servers: Servers, tls: str) -> None:
    server = smtp_servers(tls)
    password = canary()
    server.set_password("app", password)
    outcome = check_login(parse_credential(server.secret("app", password), "the test secret"), "current")
    assert outcome.accepted
    assert outcome.tls_version.startswith("TLSv1.")
    assert server.logins == [("app", True)]


@pytest.mark.parametrize("tls", ["starttls", "implicit"])
def test_a_wrong_password_is_refused_once(smtp_servers: Servers, tls: str) -> None:
    server = smtp_servers(tls)
    server.set_password("app", canary())
    wrong = canary()
    credential = parse_credential(server.secret("app", wrong), "the test secret")
    with pytest.raises(LoginRefused, match=r"refused the login \(535 .*check the staged secret") as caught:
        check_login(credential, "staged")
    assert isinstance(caught.value, PermissionDenied)
    assert wrong not in error_text(caught.value)
    # One AUTH exchange, not one per mechanism the server offers: failed logins count towards lockouts.
    assert server.logins == [("app", False)]
    assert not check_login(credential, "previous", accepted=False).accepted


def test_an_unreachable_server_is_a_retryable_error() -> None:
    port = free_port()  # nothing listens there
    secret = json.dumps({"host": "127.0.0.1", "port": port, "tls": "starttls", "username": "app", "password": "x" * 12})
    with pytest.raises(ServerUnreachable, match=rf"smtp\+starttls://127.0.0.1:{port} .*is unreachable") as caught:
        check_login(parse_credential(secret, "the test secret"), "current")
    assert isinstance(caught.value, Unreachable)


@pytest.mark.parametrize("tls", ["starttls", "implicit"])
def test_a_certificate_that_does_not_verify_is_refused(smtp_servers: Servers, other_ca: Path, tls: str) -> None:
    server = smtp_servers(tls)
    password = canary()
    server.set_password("app", password)
    credential = parse_credential(server.secret("app", password, ca_file=str(other_ca)), "the test secret")
    with pytest.raises(TlsFailed, match=r"certificate did not verify .*TLS is never turned off") as caught:
        check_login(credential, "current")
    assert isinstance(caught.value, CheckFailed)
    assert server.logins == []  # the password never reached the server


def test_the_system_cas_do_not_trust_a_private_ca(smtp_servers: Servers) -> None:
    server = smtp_servers("implicit")
    credential = parse_credential(server.secret("app", canary(), ca_file=None), "the test secret")
    with pytest.raises(TlsFailed, match="against the system's CAs"):
        check_login(credential, "current")


def test_a_server_without_starttls_never_sees_the_login(smtp_servers: Servers) -> None:
    server = smtp_servers("none")
    password = canary()
    server.set_password("app", password)
    with pytest.raises(SmtpCheckFailed, match="does not offer STARTTLS, so the login would travel in plain text"):
        check_login(parse_credential(server.secret("app", password), "the test secret"), "current")
    assert server.logins == []


def test_the_wrong_tls_mode_is_named(smtp_servers: Servers) -> None:
    server = smtp_servers("starttls")
    credential = parse_credential(server.secret("app", canary(), tls="implicit"), "the test secret")
    with pytest.raises(TlsFailed, match=r"speaks implicit TLS .*tls: starttls is the other mode"):
        check_login(credential, "current")


def test_starttls_on_an_implicit_tls_port_is_named(smtp_servers: Servers, monkeypatch: pytest.MonkeyPatch) -> None:
    server = smtp_servers("implicit")
    monkeypatch.setattr("targets.smtp.login.TIMEOUT_SECONDS", 1.0)  # the server waits for a TLS hello, silent
    credential = parse_credential(server.secret("app", canary(), tls="starttls"), "the test secret")
    with pytest.raises(ServerUnreachable, match="a port that speaks implicit TLS also stays silent"):
        check_login(credential, "current")


def test_a_changed_password_is_waited_for(smtp_servers: Servers) -> None:
    server = smtp_servers("starttls")
    old, new = canary(), canary()
    server.set_password("app", old)
    credential = parse_credential(server.secret("app", new), "the test secret")
    with pytest.raises(LoginRefused, match=r"\(2 attempts over 1 s\)"):
        check_login(credential, "staged", settle_seconds=1)
    server.set_password("app", new)
    assert check_login(credential, "staged", settle_seconds=1).attempts == 1
    still = parse_credential(server.secret("app", new), "the test secret")
    with pytest.raises(SmtpCheckFailed, match="still accepts the login"):
        check_login(still, "previous", accepted=False)


def test_send_test_message(smtp_servers: Servers) -> None:
    server = smtp_servers("implicit")
    password = canary()
    server.set_password("mailer", password)
    credential = parse_credential(server.secret("mailer", password), "the test secret")
    sent = send_test_message(credential, "staged", "rotation@example.com", "ops@example.com")
    [message] = server.messages
    assert message.rcpt_tos == ["ops@example.com"]
    assert sent.message_id.encode() in message.content
    assert password.encode() not in message.content


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"tls": "none"}, "tls is 'none': this runbook never sends a login without TLS"),
        ({"tls": False}, "tls is False"),
        ({"tls": "ssl"}, "tls: Input should be 'starttls' or 'implicit'"),
        ({"port": 70000}, "port: Input should be less than or equal to 65535"),
        ({"password": ""}, "password: Value should have at least 1 item"),
        ({"ses": {"iam_user": "mailer"}}, "ses.region is missing"),
        ({"ses": {"iam_user": "bad user!", "region": "eu-west-1"}}, "ses.iam_user: String should match pattern"),
    ],
)
def test_bad_input_names_the_field(fields: dict[str, object], problem: str) -> None:
    password = canary()
    value = {"host": "smtp.example.com", "port": 587, "tls": "starttls", "username": "app", "password": password}
    with pytest.raises(SmtpSecretInvalid, match="the test secret is not an SMTP credential: ") as caught:
        parse_credential(json.dumps({**value, **fields}), "the test secret")
    assert problem in str(caught.value)
    assert "\n" not in str(caught.value)
    assert password not in error_text(caught.value)


def test_defaults_and_unknown_fields() -> None:
    implicit = parse_credential(json.dumps({"host": "h", "port": 465, "username": "u", "password": "p"}), "s")
    assert (implicit.tls, implicit.address) == ("implicit", "smtps://h:465")
    starttls = parse_credential(json.dumps({"host": "h", "username": "u", "password": "p"}), "s")
    assert (starttls.tls, starttls.port) == ("starttls", 587)
    ses = parse_credential(
        json.dumps(
            {
                "host": "email-smtp.eu-west-1.amazonaws.com",
                "username": "AKIA",
                "password": "p",
                "ses": {"iam_user": "mailer"},
            }
        ),
        "s",
    )
    assert ses.ses_region == "eu-west-1"
    with pytest.raises(SmtpSecretInvalid, match=r"us-east-1 but the host is SES.s endpoint in eu-west-1"):
        parse_credential(
            json.dumps(
                {
                    "host": "email-smtp.eu-west-1.amazonaws.com",
                    "username": "AKIA",
                    "password": "p",
                    "ses": {"iam_user": "mailer", "region": "us-east-1"},
                }
            ),
            "s",
        )
    current = json.dumps({"host": "h", "username": "u", "password": "old-password", "team": {"owner": None}})
    staged = json.loads(with_new_password(current, "new-password"))
    assert staged == {"host": "h", "username": "u", "password": "new-password", "team": {"owner": None}}
    with pytest.raises(SmtpSecretInvalid, match="is the current one"):
        with_new_password(current, "old-password")
