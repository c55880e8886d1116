"""What the log filter hides: every value a task handled and each of its lines, but not the public half of a key
pair, which the SAML runbook shows to the person who uploads it."""

from __future__ import annotations

from pathlib import Path

from redaction import REDACTED, redact, register_secret
from tests.tls import write_test_pki


def test_a_key_pairs_private_lines_are_hidden_and_its_certificate_is_not(tmp_path: Path) -> None:
    _, cert, key = write_test_pki(tmp_path)
    certificate, private_key = cert.read_text(), key.read_text()
    register_secret(certificate + private_key)

    assert redact(f"upload this certificate:\n{certificate}") == f"upload this certificate:\n{certificate}"
    body = private_key.splitlines()[1:-1]
    assert all(redact(f"logged {line}!") == f"logged {REDACTED}!" for line in body)
    assert REDACTED in redact(certificate + private_key)
    assert redact("-----BEGIN PRIVATE KEY-----") == "-----BEGIN PRIVATE KEY-----"


def test_every_line_of_a_multi_line_value_is_hidden() -> None:
    value = "first-line-of-a-secret\nsecond-line-of-a-secret"
    register_secret(value)
    assert redact("a first-line-of-a-secret and a second-line-of-a-secret") == f"a {REDACTED} and a {REDACTED}"
