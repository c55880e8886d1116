"""Logging in to an SMTP server with a credential over verified TLS, and sending a test message through it.

TLS comes first, always: with ``starttls`` the client sends EHLO and STARTTLS and nothing else in plain text (a
server that does not offer STARTTLS is an error, never a reason to log in without it); with ``implicit`` the
connection is TLS from its first byte. Certificates are verified against the secret's ``ca_file`` or the system's
CAs, with the host name checked (``ssl.create_default_context``); nothing here lowers that.

What a failure means, by the error tree's conditions:

- the server refused the login (SMTP 535, 534, 530...): :class:`LoginRefused`, a ``PermissionDenied``;
- the server's certificate did not verify, TLS could not be set up, the server offers no STARTTLS or no AUTH:
  :class:`TlsFailed` / :class:`SmtpCheckFailed`, ``CheckFailed`` (a configuration to fix, not worth a retry);
- no answer, a refused connection, a dropped connection, or a temporary SMTP reply (4xx, such as SES's
  "454 Throttling failure"): :class:`ServerUnreachable`, ``Unreachable`` (the one condition a retry may cure).

Server replies name the user at most, never the password; they still pass through ``redact``.
"""

from __future__ import annotations

import smtplib
import ssl
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from email.utils import make_msgid

from pydantic import BaseModel

from errors import CheckFailed, PermissionDenied, RotationError, Unreachable
from redaction import redact
from targets.smtp.credential import SmtpCredential

TIMEOUT_SECONDS = 10.0
# Between logins while waiting for a change to take effect: few enough failed logins to stay clear of lockouts.
_SETTLE_INTERVAL_SECONDS = 5.0


class SmtpRotationError(RotationError):
    """An SMTP step failed; the message names the server, the user and what to do."""


class ServerUnreachable(SmtpRotationError, Unreachable):
    """The server did not answer, dropped the connection, or answered with a temporary error (retried)."""


class LoginRefused(SmtpRotationError, PermissionDenied):
    """The server refused the login: wrong password, unknown or disabled user."""


class TlsFailed(SmtpRotationError, CheckFailed):
    """TLS could not be set up or the certificate did not verify; the login is never sent without it."""


class SmtpCheckFailed(SmtpRotationError, CheckFailed):
    """The server does not behave as a login or a test message needs (no AUTH, a rejected message...)."""


class LoginOutcome(BaseModel):
    """How a server answered a login over verified TLS: where, as whom, accepted or refused. No password."""

    address: str
    username: str
    accepted: bool
    refusal: str | None = None  # the server's answer to a refused login
    tls_version: str
    cipher: str
    attempts: int
    seconds: float


class SentMessage(BaseModel):
    """A test message the server accepted."""

    address: str
    username: str
    message_id: str
    recipient: str


def _reply(exc: smtplib.SMTPResponseException) -> str:
    text = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
    return redact(f"{exc.smtp_code} {' '.join(text.split())}")


def _tls_context(credential: SmtpCredential) -> ssl.SSLContext:
    try:
        return ssl.create_default_context(cafile=credential.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise TlsFailed(
            f"{credential.address}: the CA bundle ca_file={credential.ca_file!r} cannot be read "
            f"({type(exc).__name__}: {exc.strerror or exc}); point ca_file at a readable PEM file of CA certificates"
        ) from None


def _tls_failure(credential: SmtpCredential, exc: ssl.SSLError) -> TlsFailed:
    if isinstance(exc, ssl.SSLCertVerificationError):
        trust = f"the CAs in ca_file={credential.ca_file!r}" if credential.ca_file else "the system's CAs"
        return TlsFailed(
            f"{credential.address}: the server's TLS certificate did not verify against {trust} "
            f"({exc.verify_message}); set ca_file in the SMTP secret to the CA that signed it, or fix the host name "
            "(TLS is never turned off)"
        )
    other = "starttls" if credential.tls == "implicit" else "implicit"
    return TlsFailed(
        f"{credential.address}: TLS could not be set up ({exc.reason or type(exc).__name__}); check that the port "
        f"speaks {credential.tls} TLS (tls: {other} is the other mode) and that the server's TLS works"
    )


def _where(credential: SmtpCredential, role: str) -> str:
    return f"{credential.address} ({role} credential of user {credential.username!r})"


@contextmanager
def _session(credential: SmtpCredential, role: str) -> Iterator[smtplib.SMTP]:
    """A connection over verified TLS, before any login; ``role`` ("staged", "current"...) is for messages.

    Failures inside the ``with`` block (a dropped connection while sending, say) are classified here too."""
    context = _tls_context(credential)
    where = _where(credential, role)
    client: smtplib.SMTP | None = None
    try:
        if credential.tls == "implicit":
            client = smtplib.SMTP_SSL(credential.host, credential.port, timeout=TIMEOUT_SECONDS, context=context)
        else:
            client = smtplib.SMTP(credential.host, credential.port, timeout=TIMEOUT_SECONDS)
            client.ehlo()
            if not client.has_extn("starttls"):
                raise SmtpCheckFailed(
                    f"{where}: the server does not offer STARTTLS, so the login would travel in plain text; enable "
                    "STARTTLS on the server, or use its implicit-TLS port with tls: implicit"
                )
            client.starttls(context=context)
        client.ehlo()
        yield client
    except SmtpRotationError:
        raise  # already classified (ServerUnreachable is an OSError too)
    except ssl.SSLError as exc:
        raise _tls_failure(credential, exc) from None
    except smtplib.SMTPResponseException as exc:
        if 400 <= exc.smtp_code < 500:
            raise ServerUnreachable(f"{where}: temporary failure ({_reply(exc)}); it may work again shortly") from None
        raise SmtpCheckFailed(f"{where}: the server answered {_reply(exc)}") from None
    except (smtplib.SMTPServerDisconnected, OSError) as exc:
        hint = ""
        silent = isinstance(exc, TimeoutError) or isinstance(exc.__context__, TimeoutError)  # smtplib wraps it
        if silent and credential.tls == "starttls":
            hint = " (a port that speaks implicit TLS also stays silent: try tls: implicit)"
        raise ServerUnreachable(
            f"{where} is unreachable ({type(exc).__name__}: {redact(str(exc)) or 'no answer'}){hint}; check host and "
            "port in the SMTP secret and that the server runs"
        ) from None
    finally:
        if client is not None:
            try:
                client.quit()
            except (smtplib.SMTPException, OSError):
                client.close()


def _authenticate(client: smtplib.SMTP, credential: SmtpCredential, role: str) -> str | None:
    """None if the server accepts the login, else its refusal (``535 5.7.8 ...``).

    One AUTH exchange (PLAIN, else LOGIN): smtplib's ``login`` would try every mechanism the server offers,
    so one wrong password would count as several failed logins towards a provider's lockout."""
    where = _where(credential, role)
    offered = client.esmtp_features.get("auth", "").upper().split()
    mechanism = next((m for m in ("PLAIN", "LOGIN") if m in offered), None)
    if mechanism is None:
        raise SmtpCheckFailed(
            f"{where}: the server offers no AUTH PLAIN or LOGIN after TLS (offered: {' '.join(offered) or 'none'}); "
            "it cannot check this login"
        )
    client.user, client.password = credential.username, credential.secret
    try:
        client.auth(mechanism, getattr(client, f"auth_{mechanism.lower()}"))
    except smtplib.SMTPAuthenticationError as exc:
        if 400 <= exc.smtp_code < 500:
            raise ServerUnreachable(f"{where}: temporary login failure ({_reply(exc)}); it may work shortly") from None
        return _reply(exc)
    return None


def _refused(credential: SmtpCredential, role: str, reply: str, tried: str = "") -> LoginRefused:
    return LoginRefused(
        f"{_where(credential, role)}: the server refused the login ({reply}){tried}; check the {role} secret"
    )


def _login(client: smtplib.SMTP, credential: SmtpCredential, role: str) -> None:
    refusal = _authenticate(client, credential, role)
    if refusal is not None:
        raise _refused(credential, role, refusal)


def try_login(credential: SmtpCredential, role: str) -> LoginOutcome:
    """One login over verified TLS; a refused login is an outcome (``accepted=False``), every other failure raises."""
    started = time.monotonic()
    with _session(credential, role) as client:
        refusal = _authenticate(client, credential, role)
        sock = client.sock
        tls_version, cipher = (sock.version(), sock.cipher()[0]) if isinstance(sock, ssl.SSLSocket) else ("", "")
    return LoginOutcome(
        address=credential.address,
        username=credential.username,
        accepted=refusal is None,
        refusal=refusal,
        tls_version=tls_version or "",
        cipher=cipher,
        attempts=1,
        seconds=round(time.monotonic() - started, 3),
    )


def check_login(
    credential: SmtpCredential, role: str, accepted: bool = True, settle_seconds: float = 0.0
) -> LoginOutcome:
    """Log in over verified TLS until the server answers as expected: ``accepted`` (the login works) or not (it
    is refused). A server that answers otherwise is asked again for up to ``settle_seconds``, for providers that
    apply a change a little later (SES takes seconds to accept a new IAM key); then :class:`LoginRefused` (a
    refused login that should work) or :class:`SmtpCheckFailed` (an accepted one that should be refused).

    Every failure other than the login's answer (TLS, an unreachable server) raises at once.
    """
    started = time.monotonic()
    attempts = 0
    while True:
        outcome = try_login(credential, role)
        attempts += 1
        waited = time.monotonic() - started
        if outcome.accepted == accepted:
            return outcome.model_copy(update={"attempts": attempts, "seconds": round(waited, 3)})
        if waited >= settle_seconds:
            break
        time.sleep(min(_SETTLE_INTERVAL_SECONDS, settle_seconds - waited))
    tried = f" ({attempts} attempts over {waited:.0f} s)" if attempts > 1 else ""
    if accepted:
        raise _refused(credential, role, outcome.refusal or "", tried)
    raise SmtpCheckFailed(
        f"{_where(credential, role)}: the server still accepts the login{tried}, which should have been revoked; "
        "revoke it at the provider (or deactivate its access key) and check again"
    )


def send_test_message(credential: SmtpCredential, role: str, sender: str, recipient: str) -> SentMessage:
    """Log in and send a short message from ``sender`` to ``recipient``; the server must accept it."""
    message = EmailMessage()
    message["From"], message["To"] = sender, recipient
    message["Subject"] = "SMTP credential check"
    message["Message-ID"] = make_msgid(idstring=uuid.uuid4().hex[:12], domain=sender.rpartition("@")[2] or None)
    message.set_content(
        f"This message checks that the SMTP credential of {credential.username} can send mail through "
        f"{credential.host}. It needs no answer.\n"
    )
    where = _where(credential, role)
    with _session(credential, role) as client:
        _login(client, credential, role)
        try:
            refused = client.send_message(message)
        except smtplib.SMTPRecipientsRefused as exc:
            replies = "; ".join(
                f"{r}: {code} {text.decode(errors='replace')}" for r, (code, text) in exc.recipients.items()
            )
            raise SmtpCheckFailed(f"{where}: the test message was refused ({redact(replies)})") from None
        except smtplib.SMTPResponseException as exc:
            raise SmtpCheckFailed(f"{where}: the test message was refused ({_reply(exc)})") from None
        if refused:
            raise SmtpCheckFailed(f"{where}: the server refused the test message's recipient(s) {sorted(refused)}")
    return SentMessage(
        address=credential.address,
        username=credential.username,
        message_id=str(message["Message-ID"]),
        recipient=recipient,
    )
