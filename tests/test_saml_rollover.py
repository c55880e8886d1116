"""The SAML rollover against a real identity provider (pysaml2) and the example auth service as the SP.

Each phase's document is staged and promoted in a local store and the service reloaded, as the runbook will do;
the runbook's tasks verify it inside a Prefect flow. At every phase the IdP verifies the SP's signed AuthnRequest
(both bindings) and the SP decrypts the assertion encrypted to it, both through an IdP still holding the previous
phase's metadata and after it refreshed; the served metadata lists exactly the phase's certificates.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from prefect import flow

from errors import BadInput
from stores import SecretStore, Stage, open_store
from targets.http import http_client
from targets.jwt.keyset import JwtKeyset, new_key
from targets.saml.certificates import CertificateInvalid, CertificateProfile, certificate_pem, generate_key, key_pem
from targets.saml.certificates import self_signed as self_signed_certificate
from targets.saml.keyset import (
    SamlKeyset,
    add_new_pair,
    drop_old_pair,
    new_pair,
    publish_new_pair,
    request_new_pair,
    restore_roles,
    roles,
    switch_signing,
    withdraw_old_pair,
)
from targets.saml.metadata import keyset_metadata, parse_metadata
from targets.saml.sign_in import ServiceProvider, SignInFailed, sign_in
from tasks.saml import (
    MetadataMismatch,
    advance_saml_keyset,
    attach_saml_certificate,
    check_served_metadata,
    check_sign_in,
    drop_old_saml_pair,
    inspect_saml_keyset,
    report_certificate_expiry,
    signing_request_of_new_pair,
    step_version,
    undo_saml_step,
)
from tasks.secrets import discard_secret, promote_secret, revert_secret, stage_secret
from tests.fixtures.auth_service import RunningService
from tests.fixtures.prefect import drain_prefect_workers
from tests.fixtures.saml_idp import IdentityProvider
from tests.leaks import canary, error_text
from tests.tls import issue_for_request

PROFILE = {"subject": "CN=auth.example.com,O=Example", "rsa_bits": 2048, "validity_days": 90}
BINDINGS = ("redirect", "post")


@dataclass
class ServiceProviderUnderTest:
    """The auth service as an SP with its SAML secret, and the IdP that trusts it."""

    store: SecretStore
    service: RunningService
    idp: IdentityProvider
    attempts: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def secret(self) -> str:
        return self.store.uri.display

    @property
    def provider(self) -> ServiceProvider:
        base = self.service.base_url
        return ServiceProvider(
            name="auth-service",
            metadata_url=f"{base}/saml/metadata",
            login_urls=[f"{base}/saml/login?binding={binding}" for binding in BINDINGS],
        )

    def keyset(self) -> SamlKeyset:
        return SamlKeyset.from_secret(self.store.read())

    def advance(self, build: Callable[..., str], **kwargs: Any) -> str:
        """Stage and promote ``build(CURRENT)``, then reload the SP; returns the new document."""
        value = build(self.store.read(), **kwargs)
        rotation_id = str(uuid.uuid4())
        self.store.stage(value, rotation_id)
        self.store.promote(rotation_id)
        reload = http_client().post(f"{self.service.base_url}/reload", timeout=30)
        assert reload.status_code == 200, reload.text
        return value

    def served(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        metadata = parse_metadata(http_client().get(self.provider.metadata_url, timeout=10).content)
        return metadata.signing, metadata.encryption

    def sign_in(self, binding: str, encrypt_to: str | None = None) -> dict[str, Any]:
        """One sign-in; a failure is counted and re-raised."""
        self.idp.encrypt_to = encrypt_to
        self.attempts += 1
        try:
            result = sign_in(f"{self.service.base_url}/saml/login?binding={binding}")
        except SignInFailed as exc:
            self.failures.append(str(exc))
            raise
        finally:
            self.idp.encrypt_to = None
        assert result.answer is not None
        return result.answer


@pytest.fixture
def sp(tmp_path: Path, auth_service: Callable[..., RunningService], saml_idp: IdentityProvider):
    store_file = tmp_path / "store.db"
    open_store(f"local://{store_file}?secret=jwt").create(JwtKeyset(keys=[new_key()]).to_secret())
    store = open_store(f"local://{store_file}?secret=saml")
    store.create(SamlKeyset((new_pair(CertificateProfile.of(**PROFILE)),)).to_secret())
    service = auth_service(
        f"local://{store_file}?secret=jwt", saml_store=store.uri.display, saml_idp_metadata=saml_idp.metadata_url
    )
    saml_idp.trust(f"{service.base_url}/saml/metadata")
    return ServiceProviderUnderTest(store, service, saml_idp)


@flow(name="verify-saml-phase", persist_result=False)
def verify_phase(secret: str, providers: list[ServiceProvider]) -> dict[str, Any]:
    """The runbook's verification of one phase, as its tasks will run it."""
    facts = inspect_saml_keyset(secret)
    served = check_served_metadata(secret, providers)
    signed_in = check_sign_in(secret, providers)
    return {
        "roles": facts.roles,
        "cache_duration_seconds": served[0].cache_duration_seconds,
        "signed_with": [s.signed_with for s in signed_in],
        "answers": [s.answer for s in signed_in],
    }


def _fingerprints(sp: ServiceProviderUnderTest) -> dict[str, str]:
    return {pair.kid: pair.fingerprint or "" for pair in sp.keyset().keys}


def _sign_in_everywhere(sp: ServiceProviderUnderTest, decrypting: list[str], signer: str) -> None:
    """Both bindings; then an assertion encrypted to each certificate the SP should decrypt with."""
    for binding in BINDINGS:
        assert sp.sign_in(binding)["encrypted_to"] in decrypting
    health = http_client().get(f"{sp.service.base_url}/health", timeout=10).json()["saml"]
    assert health["signing"] == signer
    certificates = {pair.fingerprint: pair.certificate_text for pair in sp.keyset().keys}
    for fingerprint in decrypting:
        assert sp.sign_in("redirect", encrypt_to=certificates[fingerprint])["encrypted_to"] == fingerprint


def test_every_phase_signs_in_and_publishes_exactly_its_certificates(
    prefect_server, sp: ServiceProviderUnderTest, record_property
) -> None:
    old = sp.keyset().signing_pair.fingerprint
    assert old is not None
    phases: list[tuple[str, Callable[..., str] | None, dict[str, Any]]] = [
        ("0 steady", None, {}),
        ("1 decrypt with both keys, sign with the old", add_new_pair, PROFILE),
        ("2 metadata lists both certificates", publish_new_pair, {}),
        ("4 sign with the new key", switch_signing, {}),
        ("5a old certificate leaves the metadata", withdraw_old_pair, {}),
        ("5 old key removed", drop_old_pair, {}),
    ]
    key_lines = _key_lines(sp)
    stale_cache = sp.idp.cache
    for name, build, kwargs in phases:
        if build is not None:
            sp.advance(build, **kwargs)
            key_lines += _key_lines(sp)
        fingerprints = _fingerprints(sp)
        new = next((fp for fp in fingerprints.values() if fp != old), None)
        expected_metadata, signer, decrypting = {
            "0": ([old], old, [old]),
            "1": ([old], old, [old, new]),
            "2": ([old, new], old, [old, new]),
            "4": ([new, old], new, [new, old]),
            "5a": ([new], new, [new, old]),
            "5": ([new], new, [new]),
        }[name.split()[0]]
        assert sp.served() == (tuple(expected_metadata), tuple(expected_metadata)), name
        # An IdP that has not refreshed since the previous phase still signs the user in...
        sp.idp.cache = stale_cache
        _sign_in_everywhere(sp, decrypting, signer)
        # ...and so does one that has (phase 3 waits for this after phase 2, as phase 5 does after 5a).
        sp.idp.refresh()
        stale_cache = sp.idp.cache
        facts = verify_phase(sp.secret, [sp.provider])
        assert facts["signed_with"] == [signer, None]  # the redirect's signature names the key; POST's is in XML
        assert {a["encrypted_to"] for a in facts["answers"]} <= set(decrypting)
        assert facts["cache_duration_seconds"] == 3600
    assert sp.failures == []
    record_property("sign_ins", sp.attempts)
    record_property("failed_sign_ins", len(sp.failures))
    assert sp.idp.refused == []
    # No key reached the service's log, nor Prefect's database, logs or storage.
    drain_prefect_workers()
    prefect_server.database_file()  # its database, dumped into its home when it is PostgreSQL
    assert not any(line in sp.service.log() for line in key_lines)
    for path in (p for p in prefect_server.home.rglob("*") if p.is_file()):
        content = path.read_bytes()
        assert not any(line.encode() in content for line in key_lines), path


def _key_lines(sp: ServiceProviderUnderTest) -> list[str]:
    return [line for pair in sp.keyset().keys for line in pair.key_text.splitlines()[1:-1]]


def test_publishing_is_what_lets_the_new_key_sign(sp: ServiceProviderUnderTest) -> None:
    """Why phase 3 waits: an IdP still holding the metadata from before phase 2 refuses the new key's signature."""
    sp.advance(add_new_pair, **PROFILE)
    sp.idp.refresh()
    before_publishing = sp.idp.cache
    sp.advance(publish_new_pair)
    sp.advance(switch_signing)
    sp.idp.cache = before_publishing
    with pytest.raises(SignInFailed, match=r"identity provider .* did not accept the SP's signed AuthnRequest"):
        sp.sign_in("redirect")
    assert sp.idp.refused and "IncorrectlySigned" in sp.idp.refused[-1]


def test_rolling_back_before_retirement_keeps_every_sign_in(sp: ServiceProviderUnderTest, record_property) -> None:
    steady_roles = roles(sp.keyset())
    sp.advance(add_new_pair, **PROFILE)
    phase1_roles = roles(sp.keyset())
    sp.advance(publish_new_pair)
    phase2_roles = roles(sp.keyset())
    sp.idp.refresh()
    sp.advance(switch_signing)
    sp.idp.refresh()
    old = next(p.fingerprint for p in sp.keyset().keys if p.kid in steady_roles)
    new = next(p.fingerprint for p in sp.keyset().keys if p.kid not in steady_roles)

    # Undo in reverse: the old key signs again; then the new certificate leaves the metadata; then the new key goes.
    for restored, metadata, signer, decrypting in [
        (phase2_roles, [old, new], old, [old, new]),
        (phase1_roles, [old], old, [old, new]),
        (steady_roles, [old], old, [old]),
    ]:
        stale = sp.idp.cache
        sp.advance(restore_roles, roles=restored)
        assert roles(sp.keyset()) == restored
        assert sp.served() == (tuple(metadata), tuple(metadata))
        sp.idp.cache = stale
        _sign_in_everywhere(sp, decrypting, signer)
        sp.idp.refresh()
        _sign_in_everywhere(sp, decrypting, signer)
    assert sp.failures == []
    record_property("sign_ins", sp.attempts)

    # Skipping the middle step is what fails: an IdP with phase 4's metadata encrypts to the new key, now gone.
    sp.advance(add_new_pair, **PROFILE)
    sp.advance(publish_new_pair)
    sp.idp.refresh()
    sp.advance(switch_signing)
    sp.idp.refresh()
    sp.advance(restore_roles, roles=steady_roles)
    with pytest.raises(SignInFailed, match=r"refused the IdP's answer .*no current key decrypts"):
        sp.sign_in("post")


def test_the_hard_cutover_shape_publishes_one_certificate_at_a_time(sp: ServiceProviderUnderTest) -> None:
    old = sp.keyset().signing_pair.fingerprint
    sp.advance(add_new_pair, **PROFILE)
    new = next(p.fingerprint for p in sp.keyset().keys if p.fingerprint != old)
    certificates = {p.fingerprint: p.certificate_text for p in sp.keyset().keys}
    assert sp.served() == ((old,), (old,))
    sp.idp.refresh()
    _sign_in_everywhere(sp, [old, new], old)
    before_upload = sp.idp.cache

    # The approval: a person uploads the new certificate at the IdP, which then trusts it alone...
    upcoming = SamlKeyset.from_secret(switch_signing(sp.store.read()))
    sp.idp.trust_document(
        keyset_metadata(upcoming, f"{sp.service.base_url}/saml/metadata", f"{sp.service.base_url}/saml/acs")
    )
    # ...and the switch: the new key signs; the old one still decrypts assertions already encrypted to it.
    sp.advance(switch_signing)
    assert sp.served() == ((new,), (new,))
    _sign_in_everywhere(sp, [new, old], new)
    # Before the upload the IdP knew the old certificate only: that is the window the approval keeps short.
    sp.idp.cache = before_upload
    with pytest.raises(SignInFailed, match="did not accept the SP's signed AuthnRequest"):
        sp.sign_in("redirect")
    sp.idp.refresh()
    sp.advance(drop_old_pair)
    assert sp.served() == ((new,), (new,))
    _sign_in_everywhere(sp, [new], new)
    with pytest.raises(SignInFailed, match="no current key decrypts"):
        sp.sign_in("redirect", encrypt_to=certificates[old])


def _pem(profile: dict[str, Any], **overrides: Any) -> dict[str, str]:
    parsed = CertificateProfile.of(**profile)
    key = generate_key(parsed)
    return {
        "status": "signing",
        "certificate": certificate_pem(self_signed_certificate(key, parsed, **overrides)),
        "key": key_pem(key),
    }


def _bad_documents() -> dict[str, tuple[str, str]]:
    good, other = _pem(PROFILE), _pem(PROFILE)
    now = datetime.now(UTC)
    broken = canary()
    return {
        "a key that does not match its certificate": (
            json.dumps({"keys": [{**good, "key": other["key"]}]}),
            "the key does not match the certificate",
        ),
        "an expired certificate": (json.dumps({"keys": [_pem(PROFILE, now=now - timedelta(days=91))]}), "expired on"),
        "a certificate not yet valid": (
            json.dumps({"keys": [_pem(PROFILE, now=now + timedelta(days=1))]}),
            "is not valid yet",
        ),
        "a wrong subject": (
            json.dumps({"keys": [_pem({**PROFILE, "subject": "CN=intruder.example.com"})]}),
            "subject is 'CN=intruder.example.com'",
        ),
        "a malformed PEM": (
            json.dumps(
                {"keys": [{**good, "key": f"-----BEGIN PRIVATE KEY-----\n{broken}\n-----END PRIVATE KEY-----"}]}
            ),
            "malformed PEM private key",
        ),
    }


def test_bad_input_gives_one_clear_line_and_changes_nothing(sp: ServiceProviderUnderTest, tmp_path: Path) -> None:
    profile = CertificateProfile.of(**PROFILE)
    for name, (document, message) in _bad_documents().items():
        store = open_store(f"local://{tmp_path / 'bad.db'}?secret=bad-{uuid.uuid4().hex[:8]}")
        store.create(document)
        before = store.describe()
        with pytest.raises(CertificateInvalid, match=message) as caught:
            inspect_saml_keyset.fn(store.uri.display, profile)
        text = str(caught.value)
        assert isinstance(caught.value, BadInput) and "\n" not in text, name
        assert store.uri.display in text
        for value in json.loads(document)["keys"][0].values():
            assert not any(line in error_text(caught.value) for line in value.splitlines()[1:-1]), name
        assert "canary-" not in error_text(caught.value)
        assert store.describe() == before

        # The SP refuses the same document on reload and keeps signing users in with its current keys.
        current = sp.store.read()
        rotation_id = str(uuid.uuid4())
        sp.store.stage(document, rotation_id)
        sp.store.promote(rotation_id)
        reload = http_client().post(f"{sp.service.base_url}/reload", timeout=30)
        sp.store.revert(rotation_id, None)
        sp.store.discard(rotation_id)
        if name in ("an expired certificate", "a certificate not yet valid", "a wrong subject"):
            assert reload.status_code == 200  # pysaml2 does not check dates or names: the runbook's inspection does
            http_client().post(f"{sp.service.base_url}/reload", timeout=30).raise_for_status()
        else:
            assert reload.status_code == 500 and "still serving the previous keyset" in reload.json()["error"]
        assert sp.store.read() == current
        sp.sign_in("redirect")
    assert "canary-" not in sp.service.log()


def test_an_ec_key_set_is_refused_by_the_pysaml2_service_provider(sp: ServiceProviderUnderTest) -> None:
    ec_document = SamlKeyset((new_pair(CertificateProfile.of(**PROFILE, key_type="ec")),)).to_secret()
    rotation_id = str(uuid.uuid4())
    sp.store.stage(ec_document, rotation_id)
    sp.store.promote(rotation_id)
    reload = http_client().post(f"{sp.service.base_url}/reload", timeout=30)
    assert reload.status_code == 500 and "RSA keys only" in reload.json()["error"]
    assert sp.sign_in("post")["encrypted_to"]


def test_phase_tasks_promote_each_phase_as_its_own_version_and_undo_back_to_the_start(tmp_path: Path) -> None:
    store = open_store(f"local://{tmp_path / 'store.db'}?secret=saml")
    steady = SamlKeyset((new_pair(CertificateProfile.of(**PROFILE)),)).to_secret()
    store.create(steady)
    secret, rotation_id = store.uri.display, str(uuid.uuid4())
    start = store.describe().version_at(Stage.CURRENT)

    def stages() -> tuple[str | None, str | None]:
        description = store.describe()
        return description.version_at(Stage.CURRENT), description.version_at(Stage.PREVIOUS)

    # Phase 1 is the rotation's own staged version, as the core stages and promotes it.
    stage_secret.fn(secret, rotation_id, partial(add_new_pair, **PROFILE))
    promote_secret.fn(secret, rotation_id)
    phase1 = store.read()
    chain = [start, rotation_id]
    for step, expected in [("publish", "published"), ("switch", "signing"), ("withdraw", "signing")]:
        facts = advance_saml_keyset.fn(secret, rotation_id, step)
        assert advance_saml_keyset.fn(secret, rotation_id, step) == facts  # already done: nothing changes
        new = next(kid for kid in facts.roles if kid not in roles(SamlKeyset.from_secret(steady)))
        assert facts.roles[new] == expected and facts.version_id == step_version(rotation_id, step)
        assert stages() == (facts.version_id, chain[-1])
        chain.append(facts.version_id)
    # Undo newest first; each undo gives PREVIOUS back to the version two steps before, and runs twice harmlessly.
    for step in ("withdraw", "switch", "publish"):
        chain.pop()
        for _ in range(2):
            undo_saml_step.fn(secret, rotation_id, step, previous_version=chain[-2])
        assert stages() == (chain[-1], chain[-2]), step
    assert store.read() == phase1
    revert_secret.fn(secret, rotation_id, None)  # the core's undo of its promotion
    discard_secret.fn(secret, rotation_id)
    assert stages() == (start, None) and store.read() == steady
    assert len(store.describe().versions) == 1

    # Forward to the end: the retirement leaves the new pair alone.
    rotation_id = str(uuid.uuid4())
    stage_secret.fn(secret, rotation_id, partial(add_new_pair, **PROFILE))
    promote_secret.fn(secret, rotation_id)
    for step in ("publish", "switch", "withdraw"):
        advance_saml_keyset.fn(secret, rotation_id, step)
    final = drop_old_saml_pair.fn(secret, rotation_id)
    assert list(final.roles.values()) == ["signing"] and final.signing not in roles(SamlKeyset.from_secret(steady))
    assert drop_old_saml_pair.fn(secret, rotation_id) == final


def _garbled(pem: str) -> str:
    lines = pem.splitlines()
    return "\n".join([lines[0], lines[1][::-1], *lines[2:]])


def test_a_ca_signed_certificate_joins_through_its_signing_request(sp: ServiceProviderUnderTest) -> None:
    """The CSR path: the requested pair is promoted (the SP ignores it), the CA's answer makes it decrypt-only."""
    secret, rotation_id = sp.secret, str(uuid.uuid4())
    profile = CertificateProfile.of(**PROFILE)
    stage_secret.fn(secret, rotation_id, partial(request_new_pair, **PROFILE))
    promote_secret.fn(secret, rotation_id)
    assert http_client().post(f"{sp.service.base_url}/reload", timeout=30).status_code == 200
    sp.sign_in("redirect")  # a requested pair changes nothing for the SP
    csr = signing_request_of_new_pair.fn(secret)
    now = datetime.now(UTC)
    before = sp.store.describe()
    for certificate, message in [
        (issue_for_request(csr, now - timedelta(days=40), 30), "expired on"),
        (_garbled(issue_for_request(csr, now, 30)), "malformed PEM certificate"),
        (_pem(PROFILE)["certificate"], "is for another key than the signing"),
    ]:
        with pytest.raises(BadInput, match=message):
            attach_saml_certificate.fn(secret, rotation_id, certificate, profile)
        assert sp.store.describe() == before
    facts = attach_saml_certificate.fn(secret, rotation_id, issue_for_request(csr, now, 30), profile)
    assert facts.version_id == step_version(rotation_id, "certificate")
    new = next(p for p in facts.pairs if p.status == "decrypt")
    assert new.subject == PROFILE["subject"] and new.fingerprint is not None
    assert http_client().post(f"{sp.service.base_url}/reload", timeout=30).status_code == 200
    certificate = sp.keyset().pair(new.kid).certificate_text
    assert sp.sign_in("post", encrypt_to=certificate)["encrypted_to"] == new.fingerprint
    undo_saml_step.fn(secret, rotation_id, "certificate", previous_version=before.version_at(Stage.PREVIOUS))
    assert sp.keyset().other_pair is not None and sp.keyset().other_pair.status == "requested"


def test_keys_reload_while_the_identity_provider_is_down(sp: ServiceProviderUnderTest) -> None:
    sp.idp.available = False
    sp.advance(add_new_pair, **PROFILE)  # reloaded with the IdP metadata read before
    assert "IdP metadata unavailable (HTTPStatusError)" in sp.service.log()
    sp.idp.available = True
    new = sp.keyset().other_pair
    assert new is not None and new.certificate is not None
    assert sp.sign_in("post", encrypt_to=new.certificate_text)["encrypted_to"] == new.fingerprint


def test_served_metadata_that_misses_a_certificate_fails_the_check(prefect_server, sp: ServiceProviderUnderTest):
    """The SP was not reloaded after a phase: the check names the certificate its metadata lacks."""
    value = publish_new_pair(add_new_pair(sp.store.read(), **PROFILE))
    rotation_id = str(uuid.uuid4())
    sp.store.stage(value, rotation_id)
    sp.store.promote(rotation_id)
    new = SamlKeyset.from_secret(value).other_pair
    assert new is not None

    @flow(persist_result=False)
    def check() -> None:
        check_served_metadata(sp.secret, [sp.provider])

    with pytest.raises(MetadataMismatch, match=f"signing lacks {new.fingerprint}.*Was it reloaded"):
        check()


def test_days_left_and_renewal_per_certificate(sp: ServiceProviderUnderTest) -> None:
    sp.advance(add_new_pair, **{**PROFILE, "validity_days": 30})
    report = {r.status: r for r in report_certificate_expiry.fn(sp.secret)}
    assert set(report) == {"signing", "decrypt"}
    assert 89.9 < report["signing"].days_left <= 90 and 29.9 < report["decrypt"].days_left <= 30
    assert not report["signing"].due
    assert abs((report["signing"].renew_at - report["signing"].not_after).days + 30) <= 1  # 60 of 90 days
    assert all(r.due for r in report_certificate_expiry.fn(sp.secret, renew_before_days=45) if r.status == "decrypt")
