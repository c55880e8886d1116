"""The auth service as a SAML service provider (pysaml2 and the xmlsec1 binary), with the key pairs of a secret.

It reads the SAML key set the rotation runbook writes (a ``keys`` list of ``status``, ``certificate`` and ``key``)
with nothing but ``json`` and pysaml2, as an independent service provider would: it does not import the project's
``targets.saml``, so the tests check the stored format, not one parser against itself. A pair's status says what
the SP does with it:

- ``signing``: signs AuthnRequests; listed in the metadata for signing and encryption; decrypts assertions;
- ``published``: listed in the metadata for signing and encryption; decrypts assertions;
- ``decrypt``: decrypts assertions only (not in the metadata);
- ``requested``: waits for a CA's certificate; not used.

pysaml2 and xmlsec1 read keys from files: each loaded key set writes its PEMs into its own private folder (0700,
files 0600), removed once no request uses that key set any more. Keys never reach a log line or a response.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import defusedxml.ElementTree as SafeElementTree
import httpx
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, load_pem_private_key
from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT
from saml2.client import Saml2Client
from saml2.config import SPConfig
from saml2.metadata import entity_descriptor
from saml2.sigver import DecryptError, SignatureError
from saml2.xmldsig import DIGEST_SHA256, SIG_RSA_SHA256

from examples.auth_service.documents import stored_keys
from examples.auth_service.saml_settings import SamlSettings, SamlUnusable, SignInRefused
from stores import Stage, open_store
from stores.errors import StoreError

log = logging.getLogger("auth_service.saml")
# Keyed by the names the service accepts (saml_settings.BINDING_NAMES), which it checks before pysaml2 is loaded.
BINDINGS = {"redirect": BINDING_HTTP_REDIRECT, "post": BINDING_HTTP_POST}
_STATUSES = ("signing", "published", "decrypt", "requested")
_XENC = "http://www.w3.org/2001/04/xmlenc#"
_DS = "http://www.w3.org/2000/09/xmldsig#"
_OUTSTANDING_SECONDS = 600


def certificate_sha256(der: bytes) -> str:
    """The fingerprint identity providers show: SHA-256 of the DER certificate, colon-separated hex."""
    return ":".join(f"{byte:02X}" for byte in hashlib.sha256(der).digest())


@dataclass(frozen=True)
class _Pair:
    status: str
    fingerprint: str
    cert_file: str
    key_file: str


def _pairs(text: str, folder: Path) -> list[_Pair]:
    pairs = []
    for index, entry in enumerate(stored_keys(text, SamlUnusable, "SAML key set")):
        status = entry.get("status") if isinstance(entry, dict) else None
        if status not in _STATUSES:
            raise SamlUnusable(f"keys[{index}]: status must be one of {', '.join(_STATUSES)}")
        if status == "requested":
            continue
        try:
            certificate = x509.load_pem_x509_certificate(str(entry.get("certificate")).encode())
            key = load_pem_private_key(str(entry.get("key")).encode(), password=None)
        except (TypeError, ValueError):
            raise SamlUnusable(f"keys[{index}]: 'certificate' or 'key' is not a usable PEM") from None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise SamlUnusable(f"keys[{index}]: pysaml2 signs and decrypts with RSA keys only")
        if certificate.public_key().public_numbers() != key.public_key().public_numbers():
            raise SamlUnusable(f"keys[{index}]: the key does not match the certificate")
        cert_file, key_file = folder / f"{index}.crt", folder / f"{index}.key"
        cert_file.write_bytes(certificate.public_bytes(Encoding.PEM))
        key_file.touch(mode=0o600)
        key_file.write_text(entry["key"])
        fingerprint = certificate_sha256(certificate.public_bytes(Encoding.DER))
        pairs.append(_Pair(status, fingerprint, str(cert_file), str(key_file)))
    signing = [pair for pair in pairs if pair.status == "signing"]
    if len(signing) != 1:
        raise SamlUnusable(f"the SAML key set needs exactly one signing pair, it has {len(signing)}")
    return signing + [pair for pair in pairs if pair.status != "signing"]


def _config(settings: SamlSettings, signing: _Pair, encryption: list[_Pair], idp_metadata: str | None) -> SPConfig:
    values: dict[str, Any] = {
        "entityid": settings.entity_id,
        "key_file": signing.key_file,
        "cert_file": signing.cert_file,
        "encryption_keypairs": [{"key_file": p.key_file, "cert_file": p.cert_file} for p in encryption],
        # Metadata only: the other certificates identity providers may verify this SP's signatures with.
        "additional_cert_files": [p.cert_file for p in encryption if p is not signing]
        if idp_metadata is None
        else None,
        "service": {
            "sp": {
                "endpoints": {"assertion_consumer_service": [(settings.acs_url, BINDING_HTTP_POST)]},
                "authn_requests_signed": True,
                "want_assertions_signed": True,
                "want_response_signed": False,
                "allow_unsolicited": False,
            }
        },
        "valid_for": settings.valid_hours,
        "signing_algorithm": SIG_RSA_SHA256,  # pysaml2's default is RSA-SHA1
        "digest_algorithm": DIGEST_SHA256,
    }
    if idp_metadata is not None:
        values["metadata"] = {"inline": [idp_metadata]}
    config = SPConfig()
    config.load(values)
    return config


@dataclass(frozen=True)
class LoadedSaml:
    """One immutable snapshot of the SP's keys: a reload swaps the whole object."""

    settings: SamlSettings
    client: Saml2Client = field(repr=False)
    metadata_config: SPConfig = field(repr=False)
    idp_entity_id: str
    signing: str
    published: tuple[str, ...]
    decrypting: tuple[str, ...]
    folder: tempfile.TemporaryDirectory[str] = field(repr=False)
    loaded_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def metadata(self) -> str:
        descriptor = entity_descriptor(self.metadata_config)
        descriptor.cache_duration = f"PT{self.settings.cache_duration_seconds}S"
        return descriptor.to_string().decode()

    def health(self) -> dict[str, Any]:
        return {
            "signing": self.signing,
            "published": list(self.published),
            "decrypting": list(self.decrypting),
            "loaded_at": self.loaded_at.isoformat(),
        }


def load_saml(settings: SamlSettings, idp_metadata: str) -> LoadedSaml:
    """Read the key set from the store; :class:`SamlUnusable` if it cannot serve with the IdP of ``idp_metadata``."""
    folder = tempfile.TemporaryDirectory(prefix="auth-service-saml-")
    try:
        text = open_store(settings.store_uri).read(Stage.CURRENT)
    except StoreError as exc:
        raise SamlUnusable(f"cannot read the SAML key set from {settings.store_uri}: {exc}") from None
    pairs = _pairs(text, Path(folder.name))
    signing = pairs[0]
    published = [pair for pair in pairs if pair.status in ("signing", "published")]
    decrypting = [pair for pair in pairs if pair.status in ("signing", "published", "decrypt")]
    try:
        client = Saml2Client(_config(settings, signing, decrypting, idp_metadata))
        idps = list(client.metadata.identity_providers())
    except Exception as exc:  # pysaml2 raises many kinds; its messages name files, not keys
        raise SamlUnusable(f"cannot use the keys with the IdP's metadata: {type(exc).__name__}") from None
    if len(idps) != 1:
        raise SamlUnusable(f"the IdP metadata at {settings.idp_metadata_url} describes {len(idps)} identity providers")
    return LoadedSaml(
        settings,
        client,
        _config(settings, signing, published, None),
        idps[0],
        signing.fingerprint,
        tuple(pair.fingerprint for pair in published),
        tuple(pair.fingerprint for pair in decrypting),
        folder,
    )


def _encrypted_to(response_xml: bytes) -> str | None:
    """The fingerprint of the certificate the IdP encrypted the assertion's key to, as its KeyInfo names it."""
    root = SafeElementTree.fromstring(response_xml)
    element = root.find(f".//{{{_XENC}}}EncryptedKey/{{{_DS}}}KeyInfo/{{{_DS}}}X509Data/{{{_DS}}}X509Certificate")
    if element is None or not element.text:
        return None
    try:
        return certificate_sha256(base64.b64decode("".join(element.text.split()), validate=True))
    except binascii.Error:
        return None


class SamlServiceProvider:
    """The SP's current key set and the requests it is waiting for answers to."""

    def __init__(self, settings: SamlSettings) -> None:
        self.settings = settings
        self._idp_metadata: str | None = None
        self._outstanding: dict[str, float] = {}
        self._lock = threading.Lock()
        self._http = httpx.Client(timeout=10)  # the CA bundle loaded once, not at every reload
        self.current = self.load()

    def load(self) -> LoadedSaml:
        """The current key set, with the IdP's metadata read again (or, if the IdP does not answer, as last read:
        a key reload must not depend on the IdP being up)."""
        try:
            response = self._http.get(self.settings.idp_metadata_url)
            response.raise_for_status()
            self._idp_metadata = response.text
        except httpx.HTTPError as exc:
            if self._idp_metadata is None:
                raise SamlUnusable(
                    f"cannot read the IdP metadata at {self.settings.idp_metadata_url}: {type(exc).__name__}"
                ) from None
            log.warning("IdP metadata unavailable (%s); keeping the copy read before", type(exc).__name__)
        return load_saml(self.settings, self._idp_metadata)

    def login(self, binding: str, relay_state: str = "") -> dict[str, Any]:
        """A signed AuthnRequest: pysaml2's ``info`` (headers with a Location, or an HTML form in ``data``)."""
        sp = self.current
        request_id, info = sp.client.prepare_for_authenticate(
            entityid=sp.idp_entity_id,
            binding=BINDINGS[binding],
            sign=True,
            sigalg=SIG_RSA_SHA256,
            digest_alg=DIGEST_SHA256,
            relay_state=relay_state,
        )
        now = time.monotonic()
        with self._lock:
            for stale in [rid for rid, at in self._outstanding.items() if now - at > _OUTSTANDING_SECONDS]:
                del self._outstanding[stale]
            self._outstanding[request_id] = now
        log.info("AuthnRequest %s (%s binding) signed with %s", request_id, binding, sp.signing)
        return info

    def consume(self, saml_response: str) -> dict[str, Any]:
        """Check the IdP's answer: signed by the IdP, for a request of ours, its assertion encrypted to one of our
        current decrypt keys. Returns the subject and the certificate it was encrypted to."""
        sp = self.current
        try:
            raw = base64.b64decode(saml_response, validate=True)
            encrypted_to = _encrypted_to(raw)
        except (binascii.Error, ValueError, SyntaxError):
            raise SignInRefused("the SAMLResponse is not base64 XML") from None
        if encrypted_to is None:
            raise SignInRefused("the assertion is not encrypted to a certificate of this SP")
        with self._lock:
            outstanding = {rid: "/" for rid in self._outstanding}
        undecrypted = SignInRefused(f"no current key decrypts the assertion (encrypted to {encrypted_to})")
        try:
            answer = sp.client.parse_authn_request_response(saml_response, BINDING_HTTP_POST, outstanding)
            if answer is None:
                raise SignInRefused("the response answers no request of this SP")
            if not answer.assertions:  # pysaml2 drops an assertion it could not decrypt without saying so
                raise undecrypted
            subject = answer.get_subject().text
        except SignInRefused:
            raise
        except DecryptError:
            raise undecrypted from None
        except SignatureError:
            raise SignInRefused("the IdP's signature does not verify") from None
        except Exception as exc:  # pysaml2's many refusals; their text may quote the response, the name does not
            raise SignInRefused(f"the response was refused ({type(exc).__name__})") from None
        with self._lock:
            self._outstanding.pop(answer.in_response_to, None)
        log.info("sign-in accepted for a request %s, assertion encrypted to %s", answer.in_response_to, encrypted_to)
        return {"subject": subject, "encrypted_to": encrypted_to, "in_response_to": answer.in_response_to}
