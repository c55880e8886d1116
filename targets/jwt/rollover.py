"""The keyset documents of a rollover, as pure functions of the current one: what a rotation stages and promotes.

Each takes the current keyset's text and returns the next one's (``Rotation.stage`` calls the first with the
CURRENT value). Every key read or made is registered for redaction.
"""

from __future__ import annotations

from redaction import register_secret
from targets.jwt.keyset import (
    Algorithm,
    JwtKeyset,
    KeysetError,
    new_key,
    published,
    rotated,
    switched,
    without_previous,
)


def parse_keyset(text: str, where: str) -> JwtKeyset:
    """The keyset in ``text``; a malformed one is a :class:`KeysetError` naming ``where``, never its content."""
    register_secret(text)
    try:
        keyset = JwtKeyset.from_secret(text)
    except KeysetError as exc:
        raise KeysetError(f"{where}: {exc}") from None
    for key in keyset.keys:
        register_secret(key.material())
    return keyset


def next_keyset(current: str, algorithm: Algorithm = "HS256", key_bits: int = 512, publish_first: bool = False) -> str:
    """A new key that signs while the current one only verifies; or, with ``publish_first``, the new key
    verify-only beside the current signing key."""
    keyset, key = parse_keyset(current, "the current keyset"), new_key(algorithm, key_bits)
    register_secret(key.material())
    return (published(keyset, key) if publish_first else rotated(keyset, key)).to_secret()


def switched_keyset(current: str) -> str:
    """The published key signs, the old signing key verifies only."""
    return switched(parse_keyset(current, "the current keyset")).to_secret()


def final_keyset(current: str) -> str:
    """The signing key alone: the old key is gone."""
    return without_previous(parse_keyset(current, "the current keyset")).to_secret()
