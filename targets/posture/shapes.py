"""What a secret's value is and how strong, without keeping or showing it.

The value's JSON shape says what it holds, as the runbooks store them: a JWT keyset (``keys`` with ``k`` or ``pem``,
or the legacy ``JWT_SECRET_KEY_NEW``/``_OLD`` variables), a SAML keyset (``keys`` with ``certificate`` and ``key``),
a PostgreSQL, Redis or SMTP credential (an object with a ``password``); anything else is an opaque value, judged as a
password. Each piece of secret material gets a strength (bits for keys; length, character classes and the bits they
can carry for passwords) and a keyed fingerprint: an HMAC under a key the caller holds for one report only, so that
the same material in two secrets shows as the same fingerprint within the report, and nothing outside it can test a
guess against one. Certificates give their expiry. Nothing returned holds the value or a plain hash of it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import string
from datetime import datetime
from typing import Any, Literal

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from pydantic import BaseModel, ConfigDict

from errors import BadInput
from targets.jwt.keyset import NEW_VARIABLE, OLD_VARIABLE, hs_strength_bits
from targets.saml.certificates import fingerprint as certificate_fingerprint
from targets.saml.certificates import load_certificate, renewal_due

Shape = Literal["jwt-keyset", "saml-keyset", "postgres", "redis", "smtp", "opaque"]
StrengthKind = Literal["symmetric", "rsa", "ec", "password"]
_HEX = frozenset(string.hexdigits)
_CLASSES = (
    ("lower", frozenset(string.ascii_lowercase)),
    ("upper", frozenset(string.ascii_uppercase)),
    ("digit", frozenset(string.digits)),
)
_OTHER_POOL = 33  # printable ASCII that is neither a letter nor a digit, space included


class Strength(BaseModel):
    """How strong one piece of secret material is; ``what`` names it within the secret (``key 2 (verify)``)."""

    model_config = ConfigDict(frozen=True)

    what: str
    kind: StrengthKind
    bits: float | None  # None: the material could not be read
    length: int | None = None
    classes: tuple[str, ...] = ()


class Certificate(BaseModel):
    model_config = ConfigDict(frozen=True)

    what: str
    fingerprint: str  # of the certificate, which is public
    not_after: datetime
    renew_at: datetime


class ValueFacts(BaseModel):
    """What a report may know of a value."""

    model_config = ConfigDict(frozen=True)

    shape: Shape
    strengths: tuple[Strength, ...]
    fingerprints: tuple[str, ...]  # keyed, one per distinct piece of material
    certificates: tuple[Certificate, ...] = ()
    problems: tuple[str, ...] = ()


def keyed_fingerprint(material: str, key: bytes) -> str:
    return "hmac:" + hmac.new(key, material.encode(), hashlib.sha256).hexdigest()[:32]


def password_strength(what: str, password: str) -> Strength:
    """Length, character classes, and the bits that length can carry over the character set it draws from (hex
    digits count 4 bits each: a hex string is not a password over 36 characters)."""
    chars = set(password)
    classes = tuple(name for name, members in _CLASSES if chars & members)
    if chars - set().union(*(members for _, members in _CLASSES)):
        classes += ("other",)
    if chars <= _HEX:
        bits = 4.0 * len(password)
    else:
        pool = sum(26 if c in ("lower", "upper") else 10 if c == "digit" else _OTHER_POOL for c in classes)
        bits = len(password) * math.log2(pool) if pool > 1 else 0.0
    return Strength(what=what, kind="password", bits=round(bits, 1), length=len(password), classes=classes)


def _key_strength(what: str, pem: str) -> Strength:
    try:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return Strength(what=what, kind="rsa", bits=None)
    if isinstance(key, rsa.RSAPrivateKey):
        return Strength(what=what, kind="rsa", bits=key.key_size)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return Strength(what=what, kind="ec", bits=key.curve.key_size)
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return Strength(what=what, kind="ec", bits=256 if isinstance(key, ed25519.Ed25519PrivateKey) else 448)
    return Strength(what=what, kind="rsa", bits=None)


def _name(entry: dict[str, Any], index: int) -> str:
    status = entry.get("status")
    return f"key {index + 1}" + (f" ({status})" if isinstance(status, str) and status.isidentifier() else "")


class _Reader:
    def __init__(self, key: bytes, renew_before_days: float | None) -> None:
        self.key, self.renew_before_days = key, renew_before_days
        self.strengths: list[Strength] = []
        self.material: dict[str, None] = {}  # in order, each once
        self.certificates: list[Certificate] = []
        self.problems: list[str] = []

    def add(self, strength: Strength, material: str) -> None:
        self.strengths.append(strength)
        self.material[keyed_fingerprint(material, self.key)] = None
        if strength.bits is None:
            self.problems.append(f"{strength.what} could not be read as a private key")

    def certificate(self, what: str, pem: Any) -> None:
        try:
            cert = load_certificate(pem, what)
        except BadInput:
            self.problems.append(f"{what}: the certificate could not be read")
            return
        self.certificates.append(
            Certificate(
                what=what,
                fingerprint=certificate_fingerprint(cert),
                not_after=cert.not_valid_after_utc,
                renew_at=renewal_due(cert, self.renew_before_days),
            )
        )

    def facts(self, shape: Shape) -> ValueFacts:
        return ValueFacts(
            shape=shape,
            strengths=tuple(self.strengths),
            fingerprints=tuple(self.material),
            certificates=tuple(self.certificates),
            problems=tuple(self.problems),
        )


def inspect_value(value: str, key: bytes, renew_before_days: float | None = None) -> ValueFacts:
    """The shape, strengths, keyed fingerprints (under ``key``) and certificates of one secret value."""
    reader = _Reader(key, renew_before_days)
    try:
        document = json.loads(value)
    except ValueError:
        document = None
    if not isinstance(document, dict):
        reader.add(password_strength("value", value), value)
        return reader.facts("opaque")
    keys = document.get("keys")
    if isinstance(keys, list) and keys and all(isinstance(k, dict) for k in keys):
        saml = any("certificate" in k or "csr" in k for k in keys)
        for index, entry in enumerate(keys):
            what = _name(entry, index)
            if saml:
                if isinstance(entry.get("key"), str):
                    reader.add(_key_strength(what, entry["key"]), entry["key"])
                if entry.get("certificate"):
                    reader.certificate(what, entry["certificate"])
            elif isinstance(entry.get("k"), str):
                secret = entry["k"]
                reader.add(Strength(what=what, kind="symmetric", bits=hs_strength_bits(secret)), secret)
            elif isinstance(entry.get("pem"), str):
                reader.add(_key_strength(what, entry["pem"]), entry["pem"])
            else:
                reader.problems.append(f"{what} holds no key material this report knows (k, pem, key)")
        return reader.facts("saml-keyset" if saml else "jwt-keyset")
    legacy = [v for v in (document.get(NEW_VARIABLE), document.get(OLD_VARIABLE)) if isinstance(v, str) and v]
    if legacy:
        for index, secret in enumerate(legacy):
            what = NEW_VARIABLE if index == 0 else OLD_VARIABLE
            reader.add(Strength(what=what, kind="symmetric", bits=hs_strength_bits(secret)), secret)
        return reader.facts("jwt-keyset")
    password = document.get("password")
    if isinstance(password, str):
        reader.add(password_strength("password", password), password)
        return reader.facts(_credential_shape(document))
    reader.add(password_strength("value", value), value)
    return reader.facts("opaque")


def _credential_shape(document: dict[str, Any]) -> Shape:
    if document.get("engine") in ("postgres", "postgresql") or "dbname" in document:
        return "postgres"
    if document.get("tls") in ("starttls", "implicit") or "ses" in document:
        return "smtp"
    return "redis"
