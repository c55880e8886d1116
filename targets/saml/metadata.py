"""SAML 2.0 service-provider metadata: generated from a key set, and parsed back into the certificates per use.

Identity providers read an SP's signing certificates (to verify its AuthnRequests) and encryption certificates (to
encrypt assertions to it) from its metadata, and keep it for ``cacheDuration`` (or until ``validUntil``): how long
a rollover must wait after publishing a certificate before the SP may sign with it.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Literal
from xml.etree import ElementTree

import defusedxml.ElementTree as SafeElementTree
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from defusedxml import DefusedXmlException
from pydantic import BaseModel, ConfigDict

from errors import BadInput
from targets.saml.certificates import fingerprint
from targets.saml.keyset import SamlKeyset

MD = "urn:oasis:names:tc:SAML:2.0:metadata"
DS = "http://www.w3.org/2000/09/xmldsig#"
PROTOCOL = "urn:oasis:names:tc:SAML:2.0:protocol"
HTTP_POST = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST"
NAMEID_TRANSIENT = "urn:oasis:names:tc:SAML:2.0:nameid-format:transient"
Use = Literal["signing", "encryption"]
USES: tuple[Use, ...] = ("signing", "encryption")
_DURATION = re.compile(
    r"^P(?:(?P<years>\d+)Y)?(?:(?P<months>\d+)M)?(?:(?P<days>\d+)D)?"
    r"(?:T(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?$"
)

ElementTree.register_namespace("md", MD)
ElementTree.register_namespace("ds", DS)


class MetadataInvalid(BadInput):
    """A metadata document that cannot be read as SP metadata."""


class MetadataCertificates(BaseModel):
    """What an SP's metadata publishes: the certificates' SHA-256 fingerprints per use, in document order."""

    model_config = ConfigDict(frozen=True)

    entity_id: str
    signing: tuple[str, ...]
    encryption: tuple[str, ...]
    cache_duration_seconds: float | None = None
    valid_until: datetime | None = None

    def of(self, use: Use) -> tuple[str, ...]:
        return self.signing if use == "signing" else self.encryption


def duration(seconds: float) -> str:
    """An ``xs:duration`` for ``cacheDuration``."""
    return f"PT{int(seconds)}S" if float(seconds).is_integer() else f"PT{seconds}S"


def parse_duration(text: str) -> float:
    """Seconds in an ``xs:duration`` (a year counted as 365 days, a month as 30, as pysaml2 and Shibboleth do)."""
    match = _DURATION.match(text.strip())
    if match is None or text.strip() in ("P", "PT") or text.strip().endswith("T"):
        raise MetadataInvalid(f"cacheDuration {text!r} is not an xs:duration such as PT1H or P1D")
    parts = {name: float(value) for name, value in match.groupdict().items() if value}
    days = parts.get("years", 0) * 365 + parts.get("months", 0) * 30 + parts.get("days", 0)
    return timedelta(
        days=days, hours=parts.get("hours", 0), minutes=parts.get("minutes", 0), seconds=parts.get("seconds", 0)
    ).total_seconds()


def _timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _certificate_base64(certificate: x509.Certificate) -> str:
    return base64.b64encode(certificate.public_bytes(Encoding.DER)).decode()


def sp_metadata(
    entity_id: str,
    acs_url: str,
    signing: Sequence[x509.Certificate],
    encryption: Sequence[x509.Certificate],
    cache_duration_seconds: float | None = None,
    valid_until: datetime | None = None,
) -> str:
    """The SP's metadata: one KeyDescriptor per certificate and use, an HTTP-POST assertion consumer service,
    signed AuthnRequests and signed assertions wanted."""
    root = ElementTree.Element(f"{{{MD}}}EntityDescriptor", {"entityID": entity_id})
    if valid_until is not None:
        root.set("validUntil", _timestamp(valid_until))
    if cache_duration_seconds is not None:
        root.set("cacheDuration", duration(cache_duration_seconds))
    sp = ElementTree.SubElement(
        root,
        f"{{{MD}}}SPSSODescriptor",
        {"AuthnRequestsSigned": "true", "WantAssertionsSigned": "true", "protocolSupportEnumeration": PROTOCOL},
    )
    for use, certificates in (("signing", signing), ("encryption", encryption)):
        for certificate in certificates:
            descriptor = ElementTree.SubElement(sp, f"{{{MD}}}KeyDescriptor", {"use": use})
            data = ElementTree.SubElement(ElementTree.SubElement(descriptor, f"{{{DS}}}KeyInfo"), f"{{{DS}}}X509Data")
            ElementTree.SubElement(data, f"{{{DS}}}X509Certificate").text = _certificate_base64(certificate)
    ElementTree.SubElement(sp, f"{{{MD}}}NameIDFormat").text = NAMEID_TRANSIENT
    ElementTree.SubElement(
        sp,
        f"{{{MD}}}AssertionConsumerService",
        {"Binding": HTTP_POST, "Location": acs_url, "index": "0", "isDefault": "true"},
    )
    return ElementTree.tostring(root, encoding="unicode", xml_declaration=True)


def keyset_metadata(
    keyset: SamlKeyset,
    entity_id: str,
    acs_url: str,
    cache_duration_seconds: float | None = None,
    valid_until: datetime | None = None,
) -> str:
    """The metadata for a key set: its published pairs (the signing one first), each for signing and encryption."""
    certificates = [pair.certificate for pair in keyset.published if pair.certificate is not None]
    return sp_metadata(entity_id, acs_url, certificates, certificates, cache_duration_seconds, valid_until)


def expected_certificates(keyset: SamlKeyset) -> dict[Use, tuple[str, ...]]:
    """The fingerprints the metadata of an SP holding ``keyset`` lists, per use."""
    published = tuple(fp for pair in keyset.published if (fp := pair.fingerprint) is not None)
    return {"signing": published, "encryption": published}


def _certificates(descriptor: ElementTree.Element, entity_id: str) -> list[str]:
    found = []
    for element in descriptor.iter(f"{{{DS}}}X509Certificate"):
        text = "".join((element.text or "").split())
        try:
            found.append(fingerprint(x509.load_der_x509_certificate(base64.b64decode(text, validate=True))))
        except (binascii.Error, ValueError):
            raise MetadataInvalid(f"the metadata of {entity_id} has an X509Certificate that does not decode") from None
    return found


def _entity(root: ElementTree.Element, entity_id: str | None) -> ElementTree.Element:
    if root.tag == f"{{{MD}}}EntityDescriptor":
        entities = [root]
    elif root.tag == f"{{{MD}}}EntitiesDescriptor":
        entities = list(root.iter(f"{{{MD}}}EntityDescriptor"))
    else:
        raise MetadataInvalid("the document is not SAML metadata (no md:EntityDescriptor)")
    if entity_id is not None:
        entities = [entity for entity in entities if entity.get("entityID") == entity_id]
    if len(entities) != 1:
        which = f"entity {entity_id}" if entity_id else "one entity"
        raise MetadataInvalid(f"the metadata holds {len(entities)} descriptors of {which}; name the SP's entity id")
    return entities[0]


def parse_metadata(text: str | bytes, entity_id: str | None = None) -> MetadataCertificates:
    """The certificates an SP's metadata lists per use (a KeyDescriptor without ``use`` counts for both), and the
    shortest ``cacheDuration`` and earliest ``validUntil`` on the way to its SPSSODescriptor."""
    try:
        root = SafeElementTree.fromstring(text)
    except (ElementTree.ParseError, DefusedXmlException) as exc:
        raise MetadataInvalid(f"the metadata is not well-formed XML ({type(exc).__name__})") from None
    entity = _entity(root, entity_id)
    name = entity.get("entityID") or "(no entityID)"
    sp = entity.find(f"{{{MD}}}SPSSODescriptor")
    if sp is None:
        raise MetadataInvalid(f"the metadata of {name} has no SPSSODescriptor: it does not describe a service provider")
    per_use: dict[str, list[str]] = {"signing": [], "encryption": []}
    for descriptor in sp.findall(f"{{{MD}}}KeyDescriptor"):
        use = descriptor.get("use")
        if use not in (None, *USES):
            raise MetadataInvalid(f"the metadata of {name} has a KeyDescriptor with use {use!r}")
        for fp in _certificates(descriptor, name):
            for each in (use,) if use else USES:
                per_use[each].append(fp)
    holders = [root, entity, sp] if root is not entity else [entity, sp]
    durations = [parse_duration(d) for e in holders if (d := e.get("cacheDuration"))]
    try:
        ends = [datetime.fromisoformat(v.replace("Z", "+00:00")) for e in holders if (v := e.get("validUntil"))]
    except ValueError:
        raise MetadataInvalid(f"the metadata of {name} has a validUntil that is not an xs:dateTime") from None
    return MetadataCertificates(
        entity_id=name,
        signing=tuple(per_use["signing"]),
        encryption=tuple(per_use["encryption"]),
        cache_duration_seconds=min(durations) if durations else None,
        valid_until=min(e if e.tzinfo else e.replace(tzinfo=UTC) for e in ends) if ends else None,
    )
