"""The second line of defence: every log record is scrubbed of the secret values this process has handled.

Tasks call :func:`register_secret` for each value they read or generate; :func:`register_pattern` covers a value
logged before any code of ours has seen it (an SDK's debug log of the response that carries a new secret).
:func:`install` wraps the log-record factory, so the message, its arguments and any traceback are redacted before
any handler (Prefect's API handler included) sees the record.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading

REDACTED = "***"
_MIN_LENGTH = 6  # shorter values would redact ordinary words
#: PEM blocks that are public by nature: a certificate is published and a signing request goes to a CA.
_PUBLIC_PEM = re.compile(
    r"-----BEGIN (CERTIFICATE|TRUSTED CERTIFICATE|CERTIFICATE REQUEST|NEW CERTIFICATE REQUEST|PUBLIC KEY|X509 CRL)-----"
    r".*?-----END \1-----",
    re.DOTALL,
)
_PEM_ARMOR = re.compile(r"-----(BEGIN|END) [A-Z0-9 ]+-----")
_secrets: set[str] = set()
_patterns: list[re.Pattern[str]] = []
_lock = threading.Lock()
_installed = False


def register_secret(value: str) -> str:
    """Remember ``value``, and each line of it, for redaction; returns ``value`` for chaining.

    The lines of public PEM blocks in a value (a key pair's certificate) and PEM's armor lines are not secret: a
    certificate is shown to the person who uploads it at an identity provider, and must not read as a leak.
    """
    private = _PUBLIC_PEM.sub("", value)
    parts = {value, *(line for line in private.splitlines() if not _PEM_ARMOR.fullmatch(line.strip()))}
    with _lock:
        _secrets.update(p for p in parts if len(p) >= _MIN_LENGTH)
    return value


def register_pattern(pattern: str) -> None:
    """Redact the group named ``secret`` wherever ``pattern`` matches, such as
    ``<SecretAccessKey>(?P<secret>[^<]+)</SecretAccessKey>``. Idempotent."""
    compiled = re.compile(pattern)
    if "secret" not in compiled.groupindex:
        raise ValueError(f"pattern {pattern!r} has no group named 'secret'")
    with _lock:
        if compiled not in _patterns:
            _patterns.append(compiled)


def _redact_match(match: re.Match[str]) -> str:
    start, end = match.span("secret")
    whole = match.group(0)
    offset = match.start()
    return whole[: start - offset] + REDACTED + whole[end - offset :]


def redact(text: str) -> str:
    """``text`` with every registered secret, and every match of a registered pattern, replaced by ``***``."""
    with _lock:
        known = sorted(_secrets, key=len, reverse=True)
        patterns = list(_patterns)
    for secret in known:
        if secret in text:
            text = text.replace(secret, REDACTED)
    for pattern in patterns:
        text = pattern.sub(_redact_match, text)
    return text


def fingerprint(value: str) -> str:
    """A short, stable identifier of a value for logs and audit records.

    Truncated SHA-256: safe for generated secrets (256 bits and more); it would not hide a guessable password,
    which is one more reason this project only generates random ones.
    """
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()[:16]


def install() -> None:
    """Redact every log record created from now on in this process. Idempotent."""
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
    previous = logging.getLogRecordFactory()

    def factory(*args: object, **kwargs: object) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if _secrets or _patterns:
            message = record.getMessage()
            clean = redact(message)
            if clean != message:
                record.msg, record.args = clean, ()
            if record.exc_info:
                text = logging.Formatter().formatException(record.exc_info)
                record.exc_text = redact(text)
        return record

    logging.setLogRecordFactory(factory)


install()
