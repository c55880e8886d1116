"""Key pairs and X.509 certificates for a SAML service provider, and the checks a certificate must pass.

A :class:`CertificateProfile` says what a certificate should be (subject, validity, key type and key usage); the
runbook configures it, :func:`self_signed` and :func:`signing_request` follow it, and :func:`check_certificate`
holds a certificate to it, as it does a certificate a CA returned for a request (:func:`check_answers_request`).

Errors are :class:`CertificateInvalid` (bad input: nothing was changed); their messages say where the problem is
(``keys[1] (kid ...)``, ``the certificate``) and never hold key material, nor the text of a PEM that did not parse.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime, timedelta
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from errors import BadInput
from targets.private_keys import load_pem_private_key

KeyType = Literal["rsa", "ec"]
KeyUsageName = Literal[
    "digital_signature", "content_commitment", "key_encipherment", "data_encipherment", "key_agreement"
]
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
RSA_BITS = 3072
_MIN_RSA_BITS = 2048
# What a SAML SP does with its key: sign requests, and receive the key that encrypts an assertion (RSA key
# transport) or agree on it (ECDH).
DEFAULT_KEY_USAGE: dict[KeyType, tuple[KeyUsageName, ...]] = {
    "rsa": ("digital_signature", "key_encipherment"),
    "ec": ("digital_signature", "key_agreement"),
}
# A certificate valid from the moment it is made is "not yet valid" to a peer whose clock is a little behind.
BACKDATE = timedelta(minutes=5)
# cert-manager's default: renew once two thirds of the validity have passed.
RENEW_AT_FRACTION = 2 / 3


class CertificateInvalid(BadInput):
    """A certificate, key or request that cannot be used; the message never holds key material."""


class CertificateProfile(BaseModel):
    """What a new certificate must be; the same values check a certificate a CA signed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    subject: str = Field(description="The subject as an RFC 4514 string, e.g. 'CN=sp.example.com,O=Example'.")
    validity_days: int = Field(default=365, ge=1, le=3650, description="How long a self-signed certificate lasts.")
    key_type: KeyType = Field(default="rsa", description="'rsa' (RSA, 3072 bits by default) or 'ec' (P-256).")
    rsa_bits: int = Field(default=RSA_BITS, ge=_MIN_RSA_BITS, multiple_of=1024)
    key_usage: tuple[KeyUsageName, ...] | None = Field(
        default=None, description="Key usages the certificate must allow; default by key type."
    )

    @classmethod
    def of(cls, **values: object) -> CertificateProfile:
        """A profile from keyword arguments (a build's ``**kwargs``); :class:`CertificateInvalid` if they are wrong."""
        try:
            profile = cls.model_validate(values)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, error['loc'])) or 'profile'}: {error['msg']}"
                for error in exc.errors(include_input=False, include_url=False)
            )
            raise CertificateInvalid(f"the certificate profile is invalid: {problems}") from None
        profile.name()  # refuses a subject that does not parse
        return profile

    def name(self) -> x509.Name:
        try:
            name = x509.Name.from_rfc4514_string(self.subject)
        except ValueError:
            raise CertificateInvalid(
                f"the subject {self.subject!r} is not an RFC 4514 name; write it as 'CN=sp.example.com,O=Example'"
            ) from None
        if not name.get_attributes_for_oid(NameOID.COMMON_NAME):
            raise CertificateInvalid(f"the subject {self.subject!r} has no CN: name the service provider in a CN")
        return name

    @property
    def usages(self) -> tuple[KeyUsageName, ...]:
        return self.key_usage if self.key_usage is not None else DEFAULT_KEY_USAGE[self.key_type]


def generate_key(profile: CertificateProfile) -> PrivateKey:
    if profile.key_type == "rsa":
        return rsa.generate_private_key(65537, profile.rsa_bits)
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: PrivateKey) -> str:
    """The key as an unencrypted PKCS#8 PEM: handle with care."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def certificate_pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def request_pem(request: x509.CertificateSigningRequest) -> str:
    return request.public_bytes(serialization.Encoding.PEM).decode()


def _key_usage(usages: tuple[KeyUsageName, ...]) -> x509.KeyUsage:
    flags = {name: name in usages for name in KeyUsageName.__args__}  # type: ignore[attr-defined]
    return x509.KeyUsage(**flags, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False)


def self_signed(key: PrivateKey, profile: CertificateProfile, now: datetime | None = None) -> x509.Certificate:
    """A certificate for ``key`` signed by itself, as SAML SPs use (the metadata, not a CA, makes it trusted)."""
    now = now or datetime.now(UTC)
    name = profile.name()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + timedelta(days=profile.validity_days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(profile.usages), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def signing_request(key: PrivateKey, profile: CertificateProfile) -> x509.CertificateSigningRequest:
    """A CSR for ``key`` with the profile's subject and key usage, for a CA to sign."""
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(profile.name())
        .add_extension(_key_usage(profile.usages), critical=True)
        .sign(key, hashes.SHA256())
    )


def _pem_body(text: object, kind: str, where: str) -> bytes:
    if not isinstance(text, str) or f"-----BEGIN {kind}-----" not in text:
        raise CertificateInvalid(f"{where} is not a PEM {kind.lower()} (it has no BEGIN {kind} line)")
    return text.encode()


def load_certificate(text: object, where: str) -> x509.Certificate:
    body = _pem_body(text, "CERTIFICATE", where)
    try:
        return x509.load_pem_x509_certificate(body)
    except ValueError:
        raise CertificateInvalid(f"{where} is a malformed PEM certificate (it does not decode as X.509)") from None


def load_private_key(text: object, where: str) -> PrivateKey:
    if not isinstance(text, str) or "-----BEGIN" not in text or "PRIVATE KEY-----" not in text:
        raise CertificateInvalid(f"{where} is not a PEM private key (it has no BEGIN PRIVATE KEY line)")
    try:
        key = load_pem_private_key(text)
    except TypeError:
        raise CertificateInvalid(f"{where} is an encrypted private key; store it unencrypted") from None
    except ValueError:
        raise CertificateInvalid(f"{where} is a malformed PEM private key") from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < _MIN_RSA_BITS:
            raise CertificateInvalid(f"{where} is an RSA key of {key.key_size} bits; use at least {_MIN_RSA_BITS}")
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    raise CertificateInvalid(f"{where} is neither an RSA nor a P-256 EC key")


def load_request(text: object, where: str) -> x509.CertificateSigningRequest:
    body = _pem_body(text, "CERTIFICATE REQUEST", where)
    try:
        request = x509.load_pem_x509_csr(body)
    except ValueError:
        raise CertificateInvalid(f"{where} is a malformed PEM certificate request") from None
    if not request.is_signature_valid:
        raise CertificateInvalid(f"{where} has an invalid signature")
    return request


def _public_der(public_key: object) -> bytes:
    return public_key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_id(key: PrivateKey | rsa.RSAPublicKey | ec.EllipticCurvePublicKey) -> str:
    """The id of a key pair: base64url SHA-256 of its public key (SubjectPublicKeyInfo), the same before and
    after a CA signs a certificate for it."""
    public = key.public_key() if isinstance(key, PrivateKey) else key
    return base64.urlsafe_b64encode(hashlib.sha256(_public_der(public)).digest()).rstrip(b"=").decode()


def fingerprint(certificate: x509.Certificate) -> str:
    """The certificate's SHA-256 fingerprint as identity providers' consoles show it (``AB:CD:...``)."""
    return certificate.fingerprint(hashes.SHA256()).hex(":").upper()


def key_type(key: object) -> KeyType:
    return "rsa" if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey) else "ec"


def check_key_matches(certificate: x509.Certificate, key: PrivateKey, where: str) -> None:
    if _public_der(certificate.public_key()) != _public_der(key.public_key()):
        raise CertificateInvalid(
            f"{where}: the key does not match the certificate (certificate {fingerprint(certificate)} was issued "
            "for another key); store each certificate with its own key"
        )


def check_answers_request(certificate: x509.Certificate, request: x509.CertificateSigningRequest, where: str) -> None:
    """The certificate a CA returned is for the request's key."""
    if _public_der(certificate.public_key()) != _public_der(request.public_key()):
        raise CertificateInvalid(
            f"{where}: the certificate {fingerprint(certificate)} is for another key than the signing request's "
            f"(key {key_id(request.public_key())}); stage the certificate the CA issued for this request"
        )


def check_validity(certificate: x509.Certificate, where: str, now: datetime | None = None) -> None:
    now = now or datetime.now(UTC)
    start, end = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    if now < start:
        raise CertificateInvalid(
            f"{where}: the certificate {fingerprint(certificate)} is not valid yet (from {start:%Y-%m-%d %H:%M} UTC); "
            "check the issuer's clock or wait until then"
        )
    if now >= end:
        raise CertificateInvalid(
            f"{where}: the certificate {fingerprint(certificate)} expired on {end:%Y-%m-%d %H:%M} UTC; issue a new one"
        )


def check_profile(certificate: x509.Certificate, profile: CertificateProfile, where: str) -> None:
    """Subject, key type and key usage as the profile says."""
    if certificate.subject != profile.name():
        raise CertificateInvalid(
            f"{where}: the certificate's subject is {certificate.subject.rfc4514_string()!r}, the profile asks for "
            f"{profile.name().rfc4514_string()!r}; issue it for that subject or change the profile"
        )
    actual = key_type(certificate.public_key())
    if actual != profile.key_type:
        raise CertificateInvalid(
            f"{where}: the certificate holds an {actual.upper()} key, the profile asks for {profile.key_type.upper()}"
        )
    try:
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return  # RFC 5280 4.2.1.3: without the extension the key may be used for any purpose
    missing = [name for name in profile.usages if not getattr(usage, name)]
    if missing:
        raise CertificateInvalid(
            f"{where}: the certificate's key usage lacks {', '.join(missing)}, which a SAML service provider needs "
            "to sign requests and decrypt assertions; issue it with those usages"
        )


def check_certificate(
    certificate: x509.Certificate, where: str, profile: CertificateProfile | None = None, now: datetime | None = None
) -> None:
    """Within its validity, and as ``profile`` says when one is given."""
    check_validity(certificate, where, now)
    if profile is not None:
        check_profile(certificate, profile, where)


def days_left(certificate: x509.Certificate, now: datetime | None = None) -> float:
    """Days until the certificate expires (negative once it has)."""
    now = now or datetime.now(UTC)
    return (certificate.not_valid_after_utc - now).total_seconds() / 86400


def renewal_due(certificate: x509.Certificate, renew_before_days: float | None = None) -> datetime:
    """When to start replacing the certificate: ``renew_before_days`` before it expires, or by default once two
    thirds of its validity have passed, as cert-manager renews."""
    start, end = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    if renew_before_days is None:
        return start + (end - start) * RENEW_AT_FRACTION
    return max(start, end - timedelta(days=renew_before_days))
