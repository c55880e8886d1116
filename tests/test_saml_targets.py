"""The SAML targets without a server: key pairs and certificates, the checks, the phase documents, the metadata."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from errors import BadInput
from targets.saml.certificates import (
    CertificateInvalid,
    CertificateProfile,
    certificate_pem,
    days_left,
    generate_key,
    key_pem,
    renewal_due,
    self_signed,
)
from targets.saml.keyset import (
    SamlKeyset,
    add_new_pair,
    attach_certificate,
    drop_old_pair,
    keyset_from_pem,
    new_pair,
    publish_new_pair,
    request_new_pair,
    restore_roles,
    roles,
    signing_request_of,
    switch_signing,
    tls_pair,
    withdraw_old_pair,
)
from targets.saml.metadata import (
    MetadataInvalid,
    expected_certificates,
    keyset_metadata,
    parse_duration,
    parse_metadata,
)
from tests.leaks import canary, error_text
from tests.tls import issue_for_request

SUBJECT = "CN=sp.example.com,O=Example"
FAST = {"subject": SUBJECT, "rsa_bits": 2048, "validity_days": 90}


def _profile(**changes: object) -> CertificateProfile:
    return CertificateProfile.of(**{**FAST, **changes})


def _document(*pairs: dict[str, str]) -> str:
    return json.dumps({"keys": list(pairs)})


def _pem_pair(profile: CertificateProfile | None = None, now: datetime | None = None) -> dict[str, str]:
    profile = profile or _profile()
    key = generate_key(profile)
    return {"status": "signing", "certificate": certificate_pem(self_signed(key, profile, now)), "key": key_pem(key)}


def _roles_by_name(document: str, old: str, new: str) -> dict[str, str]:
    names = {old: "old", new: "new"}
    return {names[kid]: status for kid, status in roles(SamlKeyset.from_secret(document)).items()}


def test_key_pairs_follow_the_profile() -> None:
    rsa_pair = new_pair(CertificateProfile(subject=SUBJECT))
    assert isinstance(rsa_pair.key, rsa.RSAPrivateKey) and rsa_pair.key.key_size == 3072
    ec_pair = new_pair(_profile(key_type="ec", validity_days=30))
    assert isinstance(ec_pair.key, ec.EllipticCurvePrivateKey) and ec_pair.key.curve.name == "secp256r1"
    for pair, days, usages in [
        (rsa_pair, 365, {"digital_signature", "key_encipherment"}),
        (ec_pair, 30, {"digital_signature", "key_agreement"}),
    ]:
        cert = pair.certificate
        assert cert is not None
        assert cert.subject.rfc4514_string() == SUBJECT and cert.issuer == cert.subject
        lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
        assert timedelta(days=days) < lifetime <= timedelta(days=days, minutes=6)
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        allowed = {n for n in ("digital_signature", "key_encipherment", "key_agreement") if getattr(usage, n)}
        assert allowed == usages
        assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
        # Self-signed: the certificate's own key verifies it.
        cert.verify_directly_issued_by(cert)
        assert 0 < days_left(cert) <= days
    keyset = SamlKeyset((ec_pair,))
    assert SamlKeyset.from_secret(keyset.to_secret()).signing_pair.kid == ec_pair.kid


def test_the_stored_document_round_trips_and_carries_the_tls_shape() -> None:
    pair = new_pair(_profile())
    document = json.loads(SamlKeyset((pair,)).to_secret())
    assert set(document) == {"keys", "tls.crt", "tls.key"}
    assert set(document["keys"][0]) == {"kid", "status", "created_at", "certificate", "key"}
    assert document["tls.crt"] == pair.certificate_text and document["tls.key"] == pair.key_text
    assert tls_pair(SamlKeyset.from_secret(json.dumps(document))) == {
        "tls.crt": pair.certificate_text,
        "tls.key": pair.key_text,
    }
    # Written by hand: no kid, no flat fields; the kid is computed.
    bare = _document({"status": "signing", "certificate": pair.certificate_text, "key": pair.key_text})
    assert SamlKeyset.from_secret(bare).signing_pair.kid == pair.kid
    # Adopting a running SP's existing files gives the same key set.
    assert keyset_from_pem(pair.certificate_text, pair.key_text, _profile()).signing_pair.kid == pair.kid
    other = new_pair(_profile())
    with pytest.raises(BadInput, match=r"tls\.crt does not repeat the signing pair"):
        SamlKeyset.from_secret(json.dumps({**document, "tls.crt": other.certificate_text}))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda p, o: {**p, "key": o["key"]}, r"keys\[0\]: the key does not match the certificate"),
        (
            lambda p, o: {
                **p,
                "certificate": "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----",
            },
            r"keys\[0\]: certificate is a malformed PEM certificate",
        ),
        (lambda p, o: {**p, "certificate": "MIIB..."}, r"keys\[0\]: certificate is not a PEM certificate"),
        (
            lambda p, o: {**p, "key": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----"},
            r"keys\[0\]: key is a malformed PEM private key",
        ),
        (lambda p, o: {**p, "status": "primary"}, r"keys\[0\]: status must be one of signing, published"),
        (lambda p, o: {**p, "status": "published"}, r"0 signing pairs"),
        (lambda p, o: {**p, "kid": "A" * 43}, r"kid is not the id of its key"),
    ],
)
def test_a_broken_pair_is_named_and_never_quoted(change, message) -> None:
    pair, other = _pem_pair(), _pem_pair()
    with pytest.raises(CertificateInvalid, match=message) as caught:
        SamlKeyset.from_secret(_document(change(pair, other)))
    for secret in (pair["key"], other["key"]):
        assert not any(line in error_text(caught.value) for line in secret.splitlines()[1:-1])


def test_a_corrupted_rsa_key_is_refused_at_every_read() -> None:
    """A key whose numbers do not hold together (one CRT exponent changed: it would sign wrongly and can leak the key
    in a fault attack) is refused, and again on the next read: a process keeps only the keys that passed."""
    pair = _pem_pair()
    numbers = serialization.load_pem_private_key(pair["key"].encode(), password=None).private_numbers()
    corrupted = rsa.RSAPrivateNumbers(
        numbers.p, numbers.q, numbers.d, numbers.dmp1 ^ 2, numbers.dmq1, numbers.iqmp, numbers.public_numbers
    ).private_key(unsafe_skip_rsa_key_validation=True)
    document = _document({**pair, "key": key_pem(corrupted)})
    for _ in range(2):
        with pytest.raises(CertificateInvalid, match=r"keys\[0\]: key is a malformed PEM private key"):
            SamlKeyset.from_secret(document)
    assert SamlKeyset.from_secret(_document(pair)).signing_pair.key_text == pair["key"]


def test_malformed_pem_holding_a_canary_is_not_echoed() -> None:
    value = canary()
    pair = _pem_pair()
    for field_name in ("key", "certificate"):
        kind = "PRIVATE KEY" if field_name == "key" else "CERTIFICATE"
        broken = {**pair, field_name: f"-----BEGIN {kind}-----\n{value}\n-----END {kind}-----\n"}
        with pytest.raises(CertificateInvalid) as caught:
            SamlKeyset.from_secret(_document(broken))
        assert value not in error_text(caught.value)
    with pytest.raises(CertificateInvalid) as caught:
        SamlKeyset.from_secret(f'{{"keys": [{{"status": "signing", "key": "{value}"')
    assert value not in error_text(caught.value) and "not valid JSON" in str(caught.value)


def test_certificates_outside_their_validity_or_profile_are_refused() -> None:
    now = datetime.now(UTC)
    for when, message in [
        (now - timedelta(days=100), "expired on"),
        (now + timedelta(days=2), "is not valid yet"),
    ]:
        pair = _pem_pair(now=when)
        with pytest.raises(CertificateInvalid, match=message):
            keyset_from_pem(pair["certificate"], pair["key"])
    pair = _pem_pair(_profile(subject="CN=someone.else"))
    with pytest.raises(CertificateInvalid, match=r"subject is 'CN=someone.else', the profile asks for 'CN=sp.example"):
        keyset_from_pem(pair["certificate"], pair["key"], _profile())
    pair = _pem_pair(_profile(key_usage=("digital_signature",)))
    with pytest.raises(CertificateInvalid, match="key usage lacks key_encipherment"):
        keyset_from_pem(pair["certificate"], pair["key"], _profile())
    with pytest.raises(CertificateInvalid, match="not an RFC 4514 name"):
        _profile(subject="sp.example.com")
    with pytest.raises(CertificateInvalid, match="rsa_bits"):
        _profile(rsa_bits=1024)


def test_a_signing_request_takes_only_the_certificate_the_ca_issued_for_it() -> None:
    now = datetime.now(UTC)
    current = SamlKeyset((new_pair(_profile()),)).to_secret()
    pending = request_new_pair(current, **FAST)
    requested = SamlKeyset.from_secret(pending).other_pair
    assert requested is not None and requested.status == "requested" and requested.certificate is None
    csr = signing_request_of(pending)
    assert "PRIVATE" not in csr

    answered = attach_certificate(pending, issue_for_request(csr, now - timedelta(minutes=1), 30), **FAST)
    pair = SamlKeyset.from_secret(answered).pair(requested.kid)
    assert pair.status == "decrypt" and pair.certificate is not None
    assert pair.certificate.issuer.rfc4514_string() == "CN=rotation tests test CA"

    foreign = request_new_pair(current, **FAST)
    for certificate, message in [
        (issue_for_request(signing_request_of(foreign), now, 30), "is for another key than the signing request's"),
        (issue_for_request(csr, now - timedelta(days=40), 30), "expired on"),
        (issue_for_request(csr, now + timedelta(days=1), 30), "not valid yet"),
        ("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----", "malformed PEM certificate"),
    ]:
        with pytest.raises(CertificateInvalid, match=message):
            attach_certificate(pending, certificate, **FAST)
    with pytest.raises(CertificateInvalid, match="the profile asks for 'CN=other'"):
        attach_certificate(pending, issue_for_request(csr, now, 30), **{**FAST, "subject": "CN=other"})


def test_the_phases_move_each_pair_through_its_roles_and_back() -> None:
    old_pair = new_pair(_profile())
    steady = SamlKeyset((old_pair,)).to_secret()
    phase1 = add_new_pair(steady, **FAST)
    new = next(kid for kid in roles(SamlKeyset.from_secret(phase1)) if kid != old_pair.kid)
    old = old_pair.kid
    phase2 = publish_new_pair(phase1)
    phase4 = switch_signing(phase2)
    phase5a = withdraw_old_pair(phase4)
    phase5 = drop_old_pair(phase5a)
    assert [_roles_by_name(doc, old, new) for doc in (phase1, phase2, phase4, phase5a, phase5)] == [
        {"old": "signing", "new": "decrypt"},
        {"old": "signing", "new": "published"},
        {"old": "published", "new": "signing"},
        {"old": "decrypt", "new": "signing"},
        {"new": "signing"},
    ]
    # The metadata of each phase: the signing pair first, then the other published one; never a decrypt-only pair.
    fingerprints = {kid: SamlKeyset.from_secret(phase2).pair(kid).fingerprint for kid in (old, new)}
    assert [
        expected_certificates(SamlKeyset.from_secret(d))["encryption"] for d in (phase1, phase2, phase4, phase5a)
    ] == [
        (fingerprints[old],),
        (fingerprints[old], fingerprints[new]),
        (fingerprints[new], fingerprints[old]),
        (fingerprints[new],),
    ]
    # Undo: the roles recorded before a step rebuild the document before it, byte for byte.
    for before, after in [(steady, phase1), (phase1, phase2), (phase2, phase4), (phase4, phase5a), (steady, phase4)]:
        assert restore_roles(after, roles(SamlKeyset.from_secret(before))) == before
    assert switch_signing(switch_signing(phase2)) == phase2
    # Hard cutover: the new pair signs straight from decrypt-only; the metadata never lists two certificates.
    cutover = switch_signing(phase1)
    assert _roles_by_name(cutover, old, new) == {"old": "decrypt", "new": "signing"}
    assert expected_certificates(SamlKeyset.from_secret(cutover))["signing"] == (fingerprints[new],)


@pytest.mark.parametrize(
    ("build", "document", "message"),
    [
        (publish_new_pair, "steady", "needs a pair with status decrypt, the key set has no second pair"),
        (switch_signing, "steady", "cannot switch signing"),
        (withdraw_old_pair, "phase1", "needs a pair with status published, the key set has pair"),
        (lambda d: add_new_pair(d, **FAST), "phase1", "already holds a second pair"),
    ],
)
def test_a_step_that_does_not_fit_the_document_is_refused(build, document, message) -> None:
    steady = SamlKeyset((new_pair(_profile()),)).to_secret()
    documents = {"steady": steady, "phase1": add_new_pair(steady, **FAST)}
    with pytest.raises(CertificateInvalid, match=message):
        build(documents[document])


def test_restoring_a_removed_key_is_refused() -> None:
    steady = SamlKeyset((new_pair(_profile()),)).to_secret()
    phase4 = switch_signing(publish_new_pair(add_new_pair(steady, **FAST)))
    with pytest.raises(CertificateInvalid, match="no longer in the key set"):
        restore_roles(drop_old_pair(phase4), roles(SamlKeyset.from_secret(steady)))


def test_metadata_round_trips_and_reads_what_others_write() -> None:
    steady = SamlKeyset((new_pair(_profile()),)).to_secret()
    phase2 = SamlKeyset.from_secret(publish_new_pair(add_new_pair(steady, **FAST)))
    until = datetime(2031, 1, 2, 3, 4, 5, tzinfo=UTC)
    xml = keyset_metadata(phase2, "https://sp.example.com/saml", "https://sp.example.com/acs", 7200, until)
    parsed = parse_metadata(xml)
    expected = expected_certificates(phase2)
    assert (parsed.signing, parsed.encryption) == (expected["signing"], expected["encryption"])
    assert len(parsed.signing) == 2
    assert (parsed.entity_id, parsed.cache_duration_seconds, parsed.valid_until) == (
        "https://sp.example.com/saml",
        7200,
        until,
    )

    one = phase2.signing_pair
    der = "".join(one.certificate_text.splitlines()[1:-1])
    federation = f"""<md:EntitiesDescriptor xmlns:md="urn:oasis:names:tc:SAML:2.0:metadata"
        xmlns:ds="http://www.w3.org/2000/09/xmldsig#" cacheDuration="P1D" validUntil="2030-05-01T00:00:00Z">
      <md:EntityDescriptor entityID="https://other.example.com"><md:SPSSODescriptor protocolSupportEnumeration="x"/>
      </md:EntityDescriptor>
      <md:EntityDescriptor entityID="https://sp.example.com/saml" cacheDuration="PT6H">
        <md:SPSSODescriptor protocolSupportEnumeration="urn:oasis:names:tc:SAML:2.0:protocol">
          <md:KeyDescriptor><ds:KeyInfo><ds:X509Data><ds:X509Certificate>
            {der}
          </ds:X509Certificate></ds:X509Data></ds:KeyInfo></md:KeyDescriptor>
        </md:SPSSODescriptor></md:EntityDescriptor></md:EntitiesDescriptor>"""
    parsed = parse_metadata(federation, "https://sp.example.com/saml")
    assert parsed.signing == parsed.encryption == (one.fingerprint,)  # no use: both
    assert parsed.cache_duration_seconds == 6 * 3600
    assert parsed.valid_until == datetime(2030, 5, 1, tzinfo=UTC)
    with pytest.raises(MetadataInvalid, match="name the SP's entity id"):
        parse_metadata(federation)
    bomb = '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;">]><x>&b;</x>'
    with pytest.raises(MetadataInvalid, match="not well-formed XML"):
        parse_metadata(bomb)
    assert [parse_duration(d) for d in ("PT1H", "P1D", "PT90S", "P1DT1H30M", "PT0.5S")] == [3600, 86400, 90, 91800, 0.5]
    for bad in ("P", "PT", "1H", "P1H", "-PT1H"):
        with pytest.raises(MetadataInvalid):
            parse_duration(bad)


def test_renewal_is_due_after_two_thirds_of_the_validity_as_cert_manager_renews() -> None:
    start = datetime(2030, 1, 1, tzinfo=UTC)
    profile = _profile(validity_days=90)
    cert = self_signed(generate_key(profile), profile, start)
    begin = cert.not_valid_before_utc
    assert renewal_due(cert) == begin + (cert.not_valid_after_utc - begin) * 2 / 3
    # 60 of 90 days, less a third of the few minutes the certificate is backdated by.
    assert timedelta(0) < start + timedelta(days=60) - renewal_due(cert) < timedelta(minutes=5)
    assert renewal_due(cert, renew_before_days=10) == cert.not_valid_after_utc - timedelta(days=10)
    assert renewal_due(cert, renew_before_days=1000) == begin
    assert days_left(cert, start + timedelta(days=30)) == pytest.approx(60)
