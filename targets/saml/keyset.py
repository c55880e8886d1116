"""The SAML service provider's key set, as stored in a secret, and the documents of a certificate rollover.

The stored value is one JSON document::

    {"keys": [{"kid": "...", "status": "signing", "created_at": "...",
               "certificate": "-----BEGIN CERTIFICATE-----...", "key": "-----BEGIN PRIVATE KEY-----..."},
              {"kid": "...", "status": "published", "created_at": "...", "certificate": "...", "key": "..."}],
     "tls.crt": "-----BEGIN CERTIFICATE-----...", "tls.key": "-----BEGIN PRIVATE KEY-----..."}

Each entry of ``keys`` is one key pair: ``certificate`` is its PEM certificate, ``key`` its unencrypted PKCS#8 (or
traditional) PEM private key, ``kid`` the base64url SHA-256 of its public key (optional on input, checked when
given). ``status`` is the pair's role:

=============  =========================  ========================  ===================================
status         signs AuthnRequests        decrypts assertions       listed in the SP metadata
=============  =========================  ========================  ===================================
``signing``    yes                        yes                       yes, for signing and encryption
``published``  no                         yes                       yes, for signing and encryption
``decrypt``    no                         yes                       no
``requested``  no                         no                        no (a key and its ``csr``, waiting
                                                                    for a CA's certificate)
=============  =========================  ========================  ===================================

Exactly one pair signs; at most one other pair stands beside it. ``tls.crt`` and ``tls.key`` repeat the signing
pair, so a Kubernetes Secret projected from the document has the ``kubernetes.io/tls`` keys a mounted consumer
reads; they are optional on input and must repeat the signing pair when given.

A rollover moves the new pair through ``decrypt -> published -> signing`` and the old one through
``signing -> published -> decrypt -> removed``; each step is a pure build ``build(current_value, **kwargs) -> str``
here. :func:`roles` gives a document's non-secret facts (kid -> status) and :func:`restore_roles` rebuilds those
roles, the inverse of any step before the old key is removed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal, get_args

from cryptography import x509

from redaction import register_secret
from targets.saml.certificates import (
    CertificateInvalid,
    CertificateProfile,
    KeyUsageName,
    PrivateKey,
    certificate_pem,
    check_answers_request,
    check_certificate,
    check_key_matches,
    fingerprint,
    generate_key,
    key_id,
    key_pem,
    key_type,
    load_certificate,
    load_private_key,
    load_request,
    request_pem,
    self_signed,
    signing_request,
)

Status = Literal["signing", "published", "decrypt", "requested"]
STATUSES: tuple[Status, ...] = ("signing", "published", "decrypt", "requested")
TLS_CERTIFICATE = "tls.crt"
TLS_KEY = "tls.key"
_FIELDS = {"kid", "status", "created_at", "certificate", "key", "csr"}
_KID = re.compile(r"^[A-Za-z0-9_-]{43}$")


class KeysetInvalid(CertificateInvalid):
    """A key set that cannot be used, or a step it cannot take; the message never holds key material."""


@dataclass(frozen=True)
class KeyPair:
    """One key pair of the SP: its key, its certificate (absent while ``requested``), its role."""

    kid: str
    status: Status
    key: PrivateKey = field(repr=False)
    key_text: str = field(repr=False)
    certificate: x509.Certificate | None = field(default=None, repr=False)
    request: x509.CertificateSigningRequest | None = field(default=None, repr=False)
    created_at: datetime | None = None

    @property
    def signs(self) -> bool:
        return self.status == "signing"

    @property
    def decrypts(self) -> bool:
        return self.status in ("signing", "published", "decrypt")

    @property
    def published(self) -> bool:
        return self.status in ("signing", "published")

    @property
    def certificate_text(self) -> str:
        if self.certificate is None:
            raise KeysetInvalid(f"key {self.kid} has no certificate yet (it waits for a CA's answer)")
        return certificate_pem(self.certificate)

    @property
    def fingerprint(self) -> str | None:
        return None if self.certificate is None else fingerprint(self.certificate)

    def document(self) -> dict[str, str]:
        doc: dict[str, str] = {"kid": self.kid, "status": self.status}
        if self.created_at is not None:
            doc["created_at"] = self.created_at.isoformat()
        if self.certificate is not None:
            doc["certificate"] = self.certificate_text
        if self.request is not None and self.certificate is None:
            doc["csr"] = request_pem(self.request)
        doc["key"] = self.key_text
        return doc


@dataclass(frozen=True)
class SamlKeyset:
    """Exactly one signing pair and at most one other, with distinct keys."""

    keys: tuple[KeyPair, ...]

    def __post_init__(self) -> None:
        kids = [pair.kid for pair in self.keys]
        if len(set(kids)) != len(kids):
            raise KeysetInvalid(f"the same key appears twice (kids: {', '.join(kids)}): every pair needs its own key")
        signing = [pair.kid for pair in self.keys if pair.signs]
        if len(signing) != 1:
            raise KeysetInvalid(
                f"the key set has {len(signing)} signing pairs (kids: {', '.join(kids) or 'none'}); exactly one "
                "pair needs status 'signing'"
            )
        if len(self.keys) > 2:
            raise KeysetInvalid(
                f"the key set holds {len(self.keys)} pairs (kids: {', '.join(kids)}); a rollover has at most two: "
                "finish or roll back the rotation that added the other"
            )

    @property
    def signing_pair(self) -> KeyPair:
        return next(pair for pair in self.keys if pair.signs)

    @property
    def other_pair(self) -> KeyPair | None:
        """The pair beside the signing one: a new pair on its way in, or an old one on its way out."""
        return next((pair for pair in self.keys if not pair.signs), None)

    @property
    def decrypting(self) -> tuple[KeyPair, ...]:
        return tuple(pair for pair in self.keys if pair.decrypts)

    @property
    def published(self) -> tuple[KeyPair, ...]:
        """The pairs the metadata lists, the signing pair first."""
        return (self.signing_pair, *(pair for pair in self.keys if pair.published and not pair.signs))

    def pair(self, kid: str) -> KeyPair:
        for pair in self.keys:
            if pair.kid == kid:
                return pair
        raise KeysetInvalid(f"no key {kid} in the key set (kids: {', '.join(p.kid for p in self.keys)})")

    def with_status(self, changes: dict[str, Status]) -> SamlKeyset:
        return SamlKeyset(tuple(replace(p, status=changes.get(p.kid, p.status)) for p in self.keys))

    @classmethod
    def from_secret(cls, text: str) -> SamlKeyset:
        """Parse and check a stored value; :class:`KeysetInvalid` names what is wrong and where."""
        if not isinstance(text, str) or not text.strip():
            raise KeysetInvalid("the secret is empty: store a SAML key set document (SamlKeyset.to_secret)")
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise KeysetInvalid(
                f"the SAML key set is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); store a "
                "JSON document with a 'keys' list"
            ) from None
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise KeysetInvalid("the SAML key set must be a JSON object with a 'keys' list of key pairs")
        unknown = sorted(set(document) - {"keys", TLS_CERTIFICATE, TLS_KEY})
        if unknown:
            raise KeysetInvalid(
                f"unknown field {', '.join(map(repr, unknown))} in the SAML key set: it holds keys, "
                f"{TLS_CERTIFICATE} and {TLS_KEY} only"
            )
        keyset = cls(tuple(_parse_pair(raw, index) for index, raw in enumerate(document["keys"])))
        expected = tls_pair(keyset)
        for name in (TLS_CERTIFICATE, TLS_KEY):
            given = document.get(name)
            if given is not None and (not isinstance(given, str) or given.strip() != expected[name].strip()):
                raise KeysetInvalid(
                    f"{name} does not repeat the signing pair (kid {keyset.signing_pair.kid}); leave it out or "
                    "rewrite the document with to_secret()"
                )
        return keyset

    def to_secret(self) -> str:
        return json.dumps({"keys": [pair.document() for pair in self.keys], **tls_pair(self)})


def _parse_pair(raw: Any, index: int) -> KeyPair:
    where = f"keys[{index}]"
    if not isinstance(raw, dict):
        raise KeysetInvalid(f"{where} must be a JSON object with status, certificate and key")
    kid = raw.get("kid")
    if isinstance(kid, str) and _KID.match(kid):
        where += f" (kid {kid})"
    elif kid is not None:
        raise KeysetInvalid(f"{where}: kid must be the base64url SHA-256 of the public key (43 characters)")
    unknown = sorted(set(raw) - _FIELDS)
    if unknown:
        raise KeysetInvalid(f"{where}: unknown field {', '.join(map(repr, unknown))}; a pair holds {sorted(_FIELDS)}")
    status = raw.get("status")
    if status not in STATUSES:
        raise KeysetInvalid(f"{where}: status must be one of {', '.join(STATUSES)}")
    key = load_private_key(raw.get("key"), f"{where}: key")
    computed = key_id(key)
    if kid is not None and kid != computed:
        raise KeysetInvalid(f"{where}: kid is not the id of its key (that is {computed}); fix or drop the kid")
    certificate = request = None
    if status == "requested":
        if raw.get("certificate") is not None:
            raise KeysetInvalid(f"{where}: a requested pair has a csr and no certificate; give it status 'decrypt'")
        request = load_request(raw.get("csr"), f"{where}: csr")
        _check_request_key(request, key, where)
    else:
        certificate = load_certificate(raw.get("certificate"), f"{where}: certificate")
        check_key_matches(certificate, key, where)
    created_at = raw.get("created_at")
    try:
        created = None if created_at is None else datetime.fromisoformat(created_at)
    except (TypeError, ValueError):
        raise KeysetInvalid(f"{where}: created_at must be an ISO 8601 time") from None
    return KeyPair(computed, status, key, raw["key"], certificate, request, created)


def _check_request_key(request: x509.CertificateSigningRequest, key: PrivateKey, where: str) -> None:
    if key_id(request.public_key()) != key_id(key):
        raise KeysetInvalid(f"{where}: the csr was made for another key than the pair's")


def tls_pair(keyset: SamlKeyset) -> dict[str, str]:
    """The signing pair as a ``kubernetes.io/tls`` Secret holds it: ``{"tls.crt": ..., "tls.key": ...}``."""
    pair = keyset.signing_pair
    return {TLS_CERTIFICATE: pair.certificate_text, TLS_KEY: pair.key_text}


def roles(keyset: SamlKeyset) -> dict[str, Status]:
    """Each pair's kid and status: the non-secret facts a step records, to check or undo it."""
    return {pair.kid: pair.status for pair in keyset.keys}


def keyset_from_pem(certificate: str, key: str, profile: CertificateProfile | None = None) -> SamlKeyset:
    """A key set of one signing pair, from an existing certificate and key (adopting a running SP)."""
    cert = load_certificate(certificate, "the certificate")
    private = load_private_key(key, "the key")
    check_key_matches(cert, private, "the certificate")
    check_certificate(cert, "the certificate", profile)
    return SamlKeyset((KeyPair(key_id(private), "signing", private, key, cert),))


def new_pair(profile: CertificateProfile, status: Status = "signing") -> KeyPair:
    """A new key with a self-signed certificate following ``profile``."""
    key = generate_key(profile)
    return KeyPair(key_id(key), status, key, key_pem(key), self_signed(key, profile), created_at=datetime.now(UTC))


def new_request(profile: CertificateProfile) -> KeyPair:
    """A new key with a signing request, waiting for a CA's certificate."""
    key = generate_key(profile)
    request = signing_request(key, profile)
    return KeyPair(key_id(key), "requested", key, key_pem(key), request=request, created_at=datetime.now(UTC))


def parse_keyset(text: str, where: str = "the current SAML key set") -> SamlKeyset:
    """The key set in ``text``; a broken one is a :class:`KeysetInvalid` naming ``where``, never its content. The
    document and every key in it are registered for redaction."""
    register_secret(text)
    try:
        keyset = SamlKeyset.from_secret(text)
    except CertificateInvalid as exc:
        raise KeysetInvalid(f"{where}: {exc}") from None
    for pair in keyset.keys:
        register_secret(pair.key_text)
    return keyset


def _single(keyset: SamlKeyset, step: str) -> None:
    other = keyset.other_pair
    if other is not None:
        raise KeysetInvalid(
            f"cannot {step}: the key set already holds a second pair (kid {other.kid}, status {other.status}); "
            "finish or roll back the rotation that added it"
        )


def _other(keyset: SamlKeyset, statuses: tuple[Status, ...], step: str) -> KeyPair:
    other = keyset.other_pair
    if other is None or other.status not in statuses:
        found = "no second pair" if other is None else f"pair {other.kid} with status {other.status}"
        needed = " or ".join(statuses)
        raise KeysetInvalid(f"cannot {step}: it needs a pair with status {needed}, the key set has {found}")
    return other


# Builds: ``build(current_value, **kwargs) -> str``, each the next document of a rollover.


def add_new_pair(current: str, **profile: Any) -> str:
    """Phase 1: a new key and self-signed certificate that decrypts only; the old pair still signs and is the only
    one in the metadata. ``profile``: the fields of :class:`CertificateProfile`."""
    keyset = parse_keyset(current)
    _single(keyset, "add a new pair")
    return SamlKeyset((*keyset.keys, new_pair(CertificateProfile.of(**profile), "decrypt"))).to_secret()


def request_new_pair(current: str, **profile: Any) -> str:
    """Phase 1 with a CA: a new key and its signing request (status ``requested``); :func:`signing_request_of`
    gives the CSR to send, :func:`attach_certificate` takes the CA's answer."""
    keyset = parse_keyset(current)
    _single(keyset, "request a new certificate")
    return SamlKeyset((*keyset.keys, new_request(CertificateProfile.of(**profile)))).to_secret()


def signing_request_of(document: str) -> str:
    """The PEM CSR of the requested pair (public: it goes to the CA)."""
    keyset = parse_keyset(document, "the SAML key set")
    pair = _other(keyset, ("requested",), "give the signing request")
    assert pair.request is not None  # a requested pair is parsed with its csr
    return request_pem(pair.request)


def attach_certificate(current: str, certificate: str, **profile: Any) -> str:
    """The CA's certificate for the requested pair, which then decrypts only (as after :func:`add_new_pair`).

    The certificate must be for the request's key, within its validity, with the profile's subject and key usage.
    """
    keyset = parse_keyset(current, "the staged SAML key set")
    pair = _other(keyset, ("requested",), "attach a certificate")
    assert pair.request is not None
    cert = load_certificate(certificate, "the certificate from the CA")
    check_answers_request(cert, pair.request, "the certificate from the CA")
    check_certificate(cert, "the certificate from the CA", CertificateProfile.of(**profile))
    answered = replace(pair, status="decrypt", certificate=cert, request=None)
    return SamlKeyset(tuple(answered if p.kid == pair.kid else p for p in keyset.keys)).to_secret()


def answer_signing_request(current: str, certificate: str) -> str:
    """:func:`attach_certificate` held to the signing request itself (its subject, key type and key usage): what
    ``rotate stage`` builds from the certificate a person enters while the rotation waits for the CA."""
    pair = _other(parse_keyset(current, "the SAML key set"), ("requested",), "attach a certificate")
    assert pair.request is not None
    try:
        usage = pair.request.extensions.get_extension_for_class(x509.KeyUsage).value
        usages = tuple(name for name in get_args(KeyUsageName) if getattr(usage, name))
    except x509.ExtensionNotFound:
        usages = None
    public = pair.request.public_key()
    profile: dict[str, Any] = {
        "subject": pair.request.subject.rfc4514_string(),
        "key_type": key_type(public),
        "key_usage": usages,
    }
    if profile["key_type"] == "rsa":
        profile["rsa_bits"] = public.key_size  # type: ignore[union-attr]
    return attach_certificate(current, certificate, **profile)


def publish_new_pair(current: str) -> str:
    """Phase 2: the new pair is listed in the metadata (signing and encryption) and still does not sign."""
    keyset = parse_keyset(current)
    pair = _other(keyset, ("decrypt",), "publish the new pair")
    return keyset.with_status({pair.kid: "published"}).to_secret()


def switch_signing(current: str) -> str:
    """Phase 4: the other pair signs and the signing pair takes the other's place: a published new pair makes the
    old one published (both stay in the metadata); a decrypt-only new pair (the hard cutover, one certificate at a
    time) leaves the old one decrypt-only. Applied twice, it gives the document back."""
    keyset = parse_keyset(current)
    other = _other(keyset, ("published", "decrypt"), "switch signing")
    return keyset.with_status({other.kid: "signing", keyset.signing_pair.kid: other.status}).to_secret()


def withdraw_old_pair(current: str) -> str:
    """Phase 5, first half: the old pair leaves the metadata and still decrypts what identity providers with the
    previous metadata encrypt to it."""
    keyset = parse_keyset(current)
    pair = _other(keyset, ("published",), "withdraw the old pair")
    return keyset.with_status({pair.kid: "decrypt"}).to_secret()


def drop_old_pair(current: str) -> str:
    """Phase 5: the signing pair alone; the old certificate and key are gone (the point of no return)."""
    keyset = parse_keyset(current)
    return SamlKeyset((keyset.signing_pair,)).to_secret()


def restore_roles(current: str, roles: dict[str, str]) -> str:
    """The inverse of any step but :func:`drop_old_pair`: the pairs named in ``roles`` (kid -> status, as
    :func:`roles` recorded them before the step) with those statuses; pairs not named are dropped."""
    keyset = parse_keyset(current)
    held = {pair.kid for pair in keyset.keys}
    missing = sorted(set(roles) - held)
    if missing:
        raise KeysetInvalid(
            f"cannot restore key {', '.join(missing)}: it is no longer in the key set (it was removed at retirement)"
        )
    bad = sorted(kid for kid, status in roles.items() if status not in STATUSES)
    if bad:
        raise KeysetInvalid(f"cannot restore key {', '.join(bad)}: unknown status")
    answered = sorted(kid for kid, status in roles.items() if status == "requested" and keyset.pair(kid).certificate)
    if answered:
        raise KeysetInvalid(f"cannot restore key {', '.join(answered)} to 'requested': it has its certificate now")
    kept = tuple(replace(pair, status=roles[pair.kid]) for pair in keyset.keys if pair.kid in roles)
    return SamlKeyset(kept).to_secret()
