"""Steps of the SAML certificate runbook: inspect the key set, and check what service providers and identity
providers see.

Every task reads the key set from the store itself (CURRENT, or one version by id) and returns non-secret facts:
key ids, statuses, certificate fingerprints, dates. The rollover changes nothing outside the secret: each phase is
a document of :mod:`targets.saml.keyset`, then the service providers reload it. The first phase is the rotation's
own staged version (``add_new_pair``; with a CA, :func:`request_saml_certificate` first, then the CA's answer
staged by a person through ``answer_signing_request``, or :func:`attach_saml_certificate`); each later one is
promoted by :func:`advance_saml_keyset` as a version of its own (:func:`step_version`), undone by
:func:`undo_saml_step`, and the old pair is removed by :func:`drop_old_saml_pair`, the point of no return.
:func:`verify_saml_phase` is a phase's verification; :func:`report_certificate_expiry` and
:func:`start_saml_rotation` serve the daily expiry check.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import Literal

import httpx
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.deployments import run_deployment
from pydantic import BaseModel

from errors import CheckFailed, Unreachable
from redaction import register_secret
from stores import Stage, open_store
from targets.consumers import Consumer
from targets.http import http_client
from targets.saml.certificates import (
    CertificateProfile,
    check_certificate,
    days_left,
    key_type,
    renewal_due,
    request_pem,
)
from targets.saml.keyset import (
    KeyPair,
    SamlKeyset,
    Status,
    attach_certificate,
    drop_old_pair,
    parse_keyset,
    publish_new_pair,
    request_new_pair,
    roles,
    signing_request_of,
    switch_signing,
    withdraw_old_pair,
)
from targets.saml.metadata import USES, MetadataCertificates, MetadataInvalid, expected_certificates, parse_metadata
from targets.saml.sign_in import ServiceProvider, SignIn, sign_in
from tasks import retry_if_transient, run_logger
from tasks.consumers import restart_consumers
from tasks.secrets import derived_version_id, stage_and_promote, unpromote

_RETRY = {"retries": 2, "retry_delay_seconds": [1, 3], "retry_condition_fn": retry_if_transient}
_FORWARD = {"retries": 3, "retry_delay_seconds": [1, 5, 15], "retry_condition_fn": retry_if_transient}
Step = Literal["publish", "switch", "withdraw"]
UndoableStep = Literal["request", "stage", "certificate", "publish", "switch", "withdraw"]
_STEPS: dict[str, Callable[[str], str]] = {
    "publish": publish_new_pair,  # phase 2: the new certificate in the metadata
    "switch": switch_signing,  # phase 4 (and the hard cutover's switch): the new key signs
    "withdraw": withdraw_old_pair,  # phase 5a: the old certificate leaves the metadata, its key still decrypts
}


class MetadataMismatch(CheckFailed):
    """A service provider's served metadata does not list exactly the certificates of the key set."""


class SigningKeyMismatch(CheckFailed):
    """A service provider signs with another key than the key set's signing pair."""


class PairFacts(BaseModel):
    """One key pair, without its key: what it is and what it does."""

    kid: str
    status: Status
    fingerprint: str | None  # SHA-256 of the certificate; None while the pair waits for a CA
    subject: str | None
    key_type: str
    not_before: datetime | None
    not_after: datetime | None


class KeysetFacts(BaseModel):
    """A key set's pairs, their roles (to record before a step and restore on undo), and the certificates an SP
    holding it must publish, per use."""

    signing: str
    pairs: list[PairFacts]
    roles: dict[str, Status]
    metadata: dict[str, list[str]]
    version_id: str | None = None  # the store version these facts are of, when a step promoted it


class ServedMetadata(BaseModel):
    """What one SP's metadata URL served: the certificates per use and how long IdPs may cache it."""

    name: str
    url: str
    entity_id: str
    signing: list[str]
    encryption: list[str]
    cache_duration_seconds: float | None
    valid_until: datetime | None


class CertificateExpiry(BaseModel):
    kid: str
    status: Status
    fingerprint: str
    not_after: datetime
    days_left: float
    renew_at: datetime
    due: bool


def _read(secret: str, version_id: str | None) -> tuple[SamlKeyset, str]:
    store = open_store(secret)
    if version_id is None:
        where = f"the current SAML key set of {secret}"
        return parse_keyset(store.read(Stage.CURRENT), where), where
    where = f"version {version_id} of {secret}"
    return parse_keyset(store.read_version(version_id), where), where


def _pair_facts(pair: KeyPair) -> PairFacts:
    cert = pair.certificate
    return PairFacts(
        kid=pair.kid,
        status=pair.status,
        fingerprint=pair.fingerprint,
        subject=None if cert is None else cert.subject.rfc4514_string(),
        key_type=key_type(pair.key),
        not_before=None if cert is None else cert.not_valid_before_utc,
        not_after=None if cert is None else cert.not_valid_after_utc,
    )


def _facts(keyset: SamlKeyset) -> KeysetFacts:
    return KeysetFacts(
        signing=keyset.signing_pair.kid,
        pairs=[_pair_facts(pair) for pair in keyset.keys],
        roles=roles(keyset),
        metadata={use: list(fps) for use, fps in expected_certificates(keyset).items()},
    )


def _inspect(keyset: SamlKeyset, where: str, profile: CertificateProfile | None, old_kid: str | None) -> KeysetFacts:
    for index, pair in enumerate(keyset.keys):
        if pair.certificate is not None:
            # The old pair was made to an earlier profile: only the pairs a rotation brings in must follow this one.
            held_to = None if pair.kid == old_kid else profile
            check_certificate(pair.certificate, f"{where}: keys[{index}] (kid {pair.kid})", held_to)
    return _facts(keyset)


@task(cache_policy=NO_CACHE, **_RETRY)
def inspect_saml_keyset(
    secret: str, profile: CertificateProfile | None = None, version_id: str | None = None
) -> KeysetFacts:
    """Check the key set (CURRENT, or version ``version_id``) before anything relies on it: well-formed PEM, each
    key matching its certificate, each certificate within its validity and, with ``profile``, of its subject and
    key usage. Bad input raises :class:`~targets.saml.certificates.CertificateInvalid`; nothing is changed."""
    keyset, where = _read(secret, version_id)
    return _inspect(keyset, where, profile, None)


def _fetch_metadata(provider: ServiceProvider) -> MetadataCertificates:
    try:
        response = http_client().get(provider.metadata_url, timeout=10)
    except httpx.HTTPError as exc:
        raise Unreachable(f"{provider.name}'s metadata at {provider.metadata_url}: {type(exc).__name__}") from None
    if response.status_code >= 500:
        raise Unreachable(f"{provider.name}'s metadata at {provider.metadata_url}: HTTP {response.status_code}")
    if not response.is_success:
        raise CheckFailed(f"{provider.name}'s metadata at {provider.metadata_url}: HTTP {response.status_code}")
    try:
        return parse_metadata(response.content)
    except MetadataInvalid as exc:
        raise CheckFailed(f"{provider.name}'s metadata at {provider.metadata_url}: {exc}") from None


@task(cache_policy=NO_CACHE, **_RETRY)
def check_served_metadata(
    secret: str, service_providers: list[ServiceProvider], version_id: str | None = None
) -> list[ServedMetadata]:
    """Every SP's served metadata lists exactly the certificates the key set publishes, for signing and for
    encryption; :class:`MetadataMismatch` names the ones missing or left over. Returns what each one serves,
    with its ``cacheDuration`` and ``validUntil`` (how long identity providers may keep it)."""
    keyset, _ = _read(secret, version_id)
    expected = expected_certificates(keyset)
    logger = get_run_logger()
    served = []
    for provider in service_providers:
        metadata = _fetch_metadata(provider)
        problems = []
        for use in USES:
            missing = sorted(set(expected[use]) - set(metadata.of(use)))
            extra = sorted(set(metadata.of(use)) - set(expected[use]))
            if missing:
                problems.append(f"{use} lacks {', '.join(missing)}")
            if extra:
                problems.append(f"{use} still lists {', '.join(extra)}")
        if problems:
            raise MetadataMismatch(
                f"{provider.name}'s metadata at {provider.metadata_url} does not match the key set: "
                f"{'; '.join(problems)}. Was it reloaded?"
            )
        logger.info("%s publishes %d certificate(s) as expected", provider.name, len(expected["signing"]))
        served.append(
            ServedMetadata(
                name=provider.name,
                url=provider.metadata_url,
                entity_id=metadata.entity_id,
                signing=list(metadata.signing),
                encryption=list(metadata.encryption),
                cache_duration_seconds=metadata.cache_duration_seconds,
                valid_until=metadata.valid_until,
            )
        )
    return served


@task(cache_policy=NO_CACHE, **_RETRY)
def check_sign_in(secret: str, service_providers: list[ServiceProvider], version_id: str | None = None) -> list[SignIn]:
    """Sign in through every login URL of every SP: its identity provider must accept the SP's signed
    AuthnRequest, and the SP must accept (decrypt) the assertion the IdP encrypts to it. Where the request travels
    in a redirect, its signature must verify with the key set's signing certificate (:class:`SigningKeyMismatch`
    otherwise)."""
    keyset, _ = _read(secret, version_id)
    signing = keyset.signing_pair
    certificates = [pair.certificate for pair in keyset.keys if pair.certificate is not None]
    logger = get_run_logger()
    results = []
    for provider in service_providers:
        for url in provider.login_urls:
            result = sign_in(url, certificates)
            if result.request_binding == "redirect" and result.signed_with != signing.fingerprint:
                raise SigningKeyMismatch(
                    f"{provider.name} signed its AuthnRequest with "
                    f"{result.signed_with or 'a key of none of the certificates in the key set'}; the signing "
                    f"pair is {signing.kid} ({signing.fingerprint}). Was it reloaded?"
                )
            logger.info("sign-in through %s (%s binding) succeeded", provider.name, result.request_binding)
            results.append(result)
    return results


class PhaseFacts(BaseModel):
    """What one phase's verification saw, and how long identity providers may keep the metadata served now."""

    keyset: KeysetFacts
    served: list[ServedMetadata]
    sign_ins: list[SignIn]
    idp_refresh_seconds: float


def idp_refresh_seconds(served: list[ServedMetadata], at_least: float, now: datetime | None = None) -> float:
    """How long until every identity provider has read the metadata again: an IdP keeps a copy for its
    ``cacheDuration`` and never past its ``validUntil``; with neither, only ``at_least`` (the configured wait)
    says. Never less than ``at_least``."""
    now = now or datetime.now(UTC)
    bounds = []
    for metadata in served:
        limits = [metadata.cache_duration_seconds] if metadata.cache_duration_seconds is not None else []
        if metadata.valid_until is not None:
            limits.append(max(0.0, (metadata.valid_until - now).total_seconds()))
        if limits:
            bounds.append(min(limits))
    return max([at_least, *bounds])


@task(cache_policy=NO_CACHE, **_RETRY)
def verify_saml_phase(
    secret: str,
    service_providers: list[ServiceProvider],
    profile: CertificateProfile,
    old_kid: str,
    refresh_at_least: float = 0,
) -> PhaseFacts:
    """Verify a phase as a person would: the CURRENT key set passes :func:`inspect_saml_keyset` (the pairs but
    ``old_kid`` held to ``profile``), every SP's metadata lists exactly its certificates
    (:func:`check_served_metadata`), and a sign-in through every login URL succeeds (:func:`check_sign_in`)."""
    keyset, where = _read(secret, None)
    facts = _inspect(keyset, where, profile, old_kid)
    served = check_served_metadata.fn(secret, service_providers)
    return PhaseFacts(
        keyset=facts,
        served=served,
        sign_ins=check_sign_in.fn(secret, service_providers),
        idp_refresh_seconds=idp_refresh_seconds(served, refresh_at_least),
    )


@task(cache_policy=NO_CACHE, **_RETRY)
def report_certificate_expiry(secret: str, renew_before_days: float | None = None) -> list[CertificateExpiry]:
    """Days left on each certificate of the CURRENT key set, and when to renew it: ``renew_before_days`` before
    it expires, or by default once two thirds of its validity have passed. ``due`` is true from then on."""
    keyset, _ = _read(secret, None)
    now = datetime.now(UTC)
    logger = run_logger(__name__)
    report = []
    for pair in keyset.keys:
        if pair.certificate is None or pair.fingerprint is None:
            continue
        renew_at = renewal_due(pair.certificate, renew_before_days)
        expiry = CertificateExpiry(
            kid=pair.kid,
            status=pair.status,
            fingerprint=pair.fingerprint,
            not_after=pair.certificate.not_valid_after_utc,
            days_left=round(days_left(pair.certificate, now), 3),
            renew_at=renew_at,
            due=now >= renew_at,
        )
        logger.info(
            "%s certificate %s of %s: %.1f days left (expires %s), renew from %s%s",
            expiry.status,
            expiry.fingerprint,
            secret,
            expiry.days_left,
            f"{expiry.not_after:%Y-%m-%d}",
            f"{expiry.renew_at:%Y-%m-%d}",
            ": due" if expiry.due else "",
        )
        report.append(expiry)
    return report


@task(cache_policy=NO_CACHE, **_RETRY)
def start_saml_rotation(deployment: str, secret: str, certificate: str) -> str:
    """Start a run of the rotation deployment ``deployment`` (``flow-name/deployment-name``) with its own
    parameters, to replace the signing certificate whose fingerprint is ``certificate``; returns the flow run's id.
    It runs on its own, with its approvals and waits.

    Once per certificate: a check run again (the next day's, or one killed after this call) before the rotation
    has staged its new pair gets the run already started, not a second one (Prefect's idempotency key)."""
    started = run_deployment(
        name=deployment,
        timeout=0,
        as_subflow=False,
        flow_run_name=f"renew-{secret[-40:]}",
        idempotency_key=f"renew-saml-certificate-{certificate}",
    )
    return str(started.id)


def step_version(rotation_id: str, step: str) -> str:
    """The store version a step of rotation ``rotation_id`` promotes: ``rotation_id`` itself for the staged first
    phase (``step="stage"``), a derived id for :func:`advance_saml_keyset`'s steps and the retirement."""
    return rotation_id if step == "stage" else derived_version_id(rotation_id, f"saml-{step}")


def _promote_step(secret: str, rotation_id: str, step: str, build: Callable[[str], str]) -> KeysetFacts:
    version_id = stage_and_promote(secret, step_version(rotation_id, step), build)
    facts = _facts(_read(secret, version_id)[0])
    return facts.model_copy(update={"version_id": version_id})


@task(cache_policy=NO_CACHE, **_FORWARD)
def advance_saml_keyset(secret: str, rotation_id: str, step: Step) -> KeysetFacts:
    """Promote the next phase's document, built from CURRENT (:data:`_STEPS`), as the step's own version; already
    promoted: nothing changes. Returns the facts of the document now CURRENT."""
    return _promote_step(secret, rotation_id, step, _STEPS[step])


@task(cache_policy=NO_CACHE, **_FORWARD)
def request_saml_certificate(secret: str, rotation_id: str, profile: CertificateProfile) -> KeysetFacts:
    """Phase 1 with a CA, first half: a new key and its signing request (status ``requested``, which the SP
    ignores) promoted as the step ``request``'s version; the key is made once, a resumed run finds it."""
    return _promote_step(secret, rotation_id, "request", partial(request_new_pair, **profile.model_dump()))


class NewPairFacts(BaseModel):
    """The public half of the pair a rotation brings in, for the person who takes it to a CA or an IdP."""

    kid: str
    status: Status
    subject: str
    fingerprint: str | None
    pem: str  # its certificate, or its signing request while it waits for a CA


@task(cache_policy=NO_CACHE, **_RETRY)
def show_new_pair(secret: str, rotation_id: str) -> NewPairFacts:
    """Put the new pair's certificate (or signing request) in a Prefect artifact, ``saml-new-pair-<rotation>``
    (``prefect artifact inspect KEY``), for the person asked to send it to a CA or upload it at an IdP. Public."""
    keyset, _ = _read(secret, None)
    pair = keyset.other_pair
    if pair is None:
        raise CheckFailed(f"the current SAML key set of {secret} has no new pair to show")
    if pair.certificate is None:
        assert pair.request is not None  # a requested pair is parsed with its csr
        what, pem, name = "certificate signing request", request_pem(pair.request), pair.request.subject
    else:
        what, pem, name = "certificate", pair.certificate_text, pair.certificate.subject
    subject = name.rfc4514_string()
    create_markdown_artifact(
        key=f"saml-new-pair-{rotation_id}",
        markdown=f"The new SAML {what} of `{secret}` (key `{pair.kid}`, subject `{subject}`):\n\n```\n{pem}```\n",
        description=f"SAML {what}",
    )
    return NewPairFacts(kid=pair.kid, status=pair.status, subject=subject, fingerprint=pair.fingerprint, pem=pem)


@task(cache_policy=NO_CACHE, **_RETRY)
def signing_request_of_new_pair(secret: str) -> str:
    """The PEM certificate signing request of CURRENT's requested pair, to send to the CA (public, not secret)."""
    return signing_request_of(register_secret(open_store(secret).read(Stage.CURRENT)))


@task(cache_policy=NO_CACHE, **_FORWARD)
def attach_saml_certificate(
    secret: str, rotation_id: str, certificate: str, profile: CertificateProfile
) -> KeysetFacts:
    """The CA's certificate (public) for CURRENT's requested pair, which then decrypts only, as after
    ``add_new_pair``: promoted as the step ``certificate``'s version. A certificate for another key, outside its
    validity, or of another subject or key usage is bad input and nothing changes."""
    return _promote_step(
        secret,
        rotation_id,
        "certificate",
        partial(attach_certificate, certificate=certificate, **profile.model_dump()),
    )


@task(cache_policy=NO_CACHE, **_FORWARD)
def undo_saml_step(
    secret: str,
    rotation_id: str,
    step: UndoableStep,
    previous_version: str | None,
    consumers: list[Consumer] | list[dict] | None = None,
    refresh_seconds: float = 0,
) -> None:
    """Undo a step that promoted a phase (:func:`advance_saml_keyset`, :func:`request_saml_certificate`,
    :func:`attach_saml_certificate`, or the rotation's own version, ``step="stage"``): the document before ``step``
    is CURRENT again and the step's version is gone. ``previous_version`` is the version that was PREVIOUS when the
    step ran (the version CURRENT two steps back); nothing to undo: no change.

    An undo that changes the metadata or the signing key passes ``consumers``: they load the restored document now,
    so that no reload at once changes the signing key and removes its certificate from the metadata (a sign-in in
    flight would then meet an IdP that has just read metadata without the key that signed its request). One that
    changes the metadata gives identity providers ``refresh_seconds`` to read it before the next undo goes on, so
    that none is left encrypting to a key that is gone or verifying with a certificate it lacks.
    """
    unpromote(secret, step_version(rotation_id, step), previous_version)
    if consumers:
        restart_consumers.fn(secret, rotation_id, consumers)
    time.sleep(refresh_seconds)


@task(cache_policy=NO_CACHE, **_FORWARD)
def drop_old_saml_pair(secret: str, rotation_id: str) -> KeysetFacts:
    """Phase 5: the signing pair alone; the old certificate and key are gone from CURRENT. Idempotent."""
    return _promote_step(secret, rotation_id, "retire", drop_old_pair)
