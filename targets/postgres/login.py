"""Logging in to PostgreSQL and telling apart why a login failed: refused, unreachable, or TLS that did not verify.

libpq's messages name the host and the user, never the password; they are still passed through ``redact``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg2
import psycopg2.extensions
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from errors import CheckFailed, NotFound, PermissionDenied, RotationError, Unreachable
from redaction import redact
from targets.postgres.credential import PgCredential


class PostgresRotationError(RotationError):
    """A PostgreSQL step failed; the message names the server, the user and what to do."""


class HostUnreachable(PostgresRotationError, Unreachable):
    """The server did not answer (retried: it may come back)."""


class LoginRefused(PostgresRotationError, PermissionDenied):
    """The server refused the login: wrong password, unknown user, or a user without LOGIN."""


class TlsFailed(PostgresRotationError, CheckFailed):
    """TLS was required and did not work; the runbook never falls back to plain text."""


class UnknownDatabase(PostgresRotationError, NotFound):
    """The database named by ``dbname`` does not exist."""


_REFUSED = ("password authentication failed", "is not permitted to log in", "no pg_hba.conf entry")
_TLS = ("ssl", "certificate", "root cert")


def _classify(exc: psycopg2.OperationalError, where: str, username: str, role: str, sslmode: str) -> Exception:
    text = redact(str(exc)).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    lowered = text.lower()
    if any(marker in lowered for marker in _REFUSED) or ("role" in lowered and "does not exist" in lowered):
        return LoginRefused(f"{where} refused the login of {role} user {username!r} ({text}); check the {role} secret")
    if "database" in lowered and "does not exist" in lowered:
        return UnknownDatabase(f"{where}: {text}; fix dbname in the secret or create the database")
    if any(marker in lowered for marker in _TLS):
        return TlsFailed(
            f"{where}: TLS with sslmode={sslmode} failed for {role} user {username!r} ({text}); set sslrootcert in "
            "the secret to the CA that signed the server's certificate, or enable TLS on the server "
            "(the runbook never falls back to plain text)"
        )
    return HostUnreachable(
        f"{where} is unreachable for {role} user {username!r} ({text}); check host and port in the secret "
        "and that the server runs"
    )


def open_connection(
    credential: PgCredential, username: str, password: str, role: str, dbname: str | None = None
) -> psycopg2.extensions.connection:
    """A logged-in connection (autocommit off); ``role`` ("administrator", "application") is for messages."""
    kwargs = credential.connect_kwargs(username, password, dbname)
    where = f"postgres://{credential.host}:{credential.port}/{kwargs['dbname']}"
    try:
        return psycopg2.connect(**kwargs)
    except psycopg2.OperationalError as exc:
        raise _classify(exc, where, username, role, credential.effective_sslmode) from None


@contextmanager
def connection(
    credential: PgCredential, username: str, password: str, role: str, autocommit: bool = False
) -> Iterator[psycopg2.extensions.connection]:
    """``open_connection`` as a context manager that always closes."""
    conn = open_connection(credential, username, password, role)
    conn.autocommit = autocommit
    try:
        yield conn
    finally:
        conn.close()


def login_works(credential: PgCredential, username: str, password: str) -> bool:
    """True if the login succeeds; False if the server refuses it; other failures raise."""
    try:
        open_connection(credential, username, password, "application").close()
    except LoginRefused:
        return False
    return True


@contextmanager
def patient_connection(
    credential: PgCredential, username: str, password: str, role: str, attempts: int, first_delay: float
) -> Iterator[psycopg2.extensions.connection]:
    """``connection``, trying a refused login up to ``attempts`` times with exponential backoff from
    ``first_delay`` seconds: a new password can take a moment to reach every server behind a proxy or a replica."""
    retrying = Retrying(
        stop=stop_after_attempt(max(attempts, 1)),
        wait=wait_exponential(multiplier=first_delay, max=max(first_delay, 10.0)),
        retry=retry_if_exception_type(LoginRefused),
        reraise=True,
    )
    conn = retrying(open_connection, credential, username, password, role)
    try:
        yield conn
    finally:
        conn.close()
