"""Runbook: roll a SAML service provider's certificate over: both certificates published, then the switch, then
retirement.

1. Check the key set. Make the new pair and add it decrypt-only (self-signed; or, with a CA, the key and its
   signing request, then the certificate the CA signed, staged by a person with ``rotate stage``). Promote it,
   restart the service providers, verify.
2. Publish both certificates in the metadata; restart; verify that the served metadata lists both.
3. Wait until identity providers have read it again (its ``cacheDuration``/``validUntil``, at least the configured
   wait); approve (optional).
4. Sign with the new key; restart; verify the sign-in.
5a. Withdraw the old certificate from the metadata (its key still decrypts); restart; verify; wait for identity
    providers again, plus the grace period.
5. Approve (optional); remove the old pair (the point of no return); restart; verify.

Hard cutover, for an identity provider that holds one certificate uploaded by a person: 1, then an approval in
which the person uploads the new certificate, then 4, the grace period and 5. A failure before 5 rolls back newest
first: the old key signs again, the new certificate leaves the metadata and the new key keeps decrypting (phase 1's
document) for as long as identity providers may keep the metadata that listed it, then the new pair goes. Each
undo reloads the service providers, so that the key that signs is listed in the metadata before and after every
reload, as it is going forward.
"""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow
from pydantic import BaseModel, Field, field_validator

from rotation import RotationOptions, Undo, rotation, runbook
from targets.consumers import Consumer
from targets.saml.certificates import CertificateInvalid, CertificateProfile
from targets.saml.keyset import add_new_pair, answer_signing_request
from targets.saml.sign_in import ServiceProvider
from tasks.saml import (
    advance_saml_keyset,
    drop_old_saml_pair,
    inspect_saml_keyset,
    request_saml_certificate,
    show_new_pair,
    step_version,
    undo_saml_step,
    verify_saml_phase,
)
from tasks.secrets import promote_secret


class SamlPolicy(BaseModel):
    """What the new certificate is, who signs it, and how long identity providers get at each step."""

    certificate: CertificateProfile
    issuer: Literal["self-signed", "ca"] = Field(
        default="self-signed",
        description="'ca': the runbook makes the key and a signing request, and waits for a person to stage the "
        "certificate the CA signed (`rotate stage ROTATION_ID --from-file cert.pem`).",
    )
    cutover: Literal["rollover", "hard"] = Field(
        default="rollover",
        description="'hard' for identity providers that hold one certificate: a person uploads the new one at an "
        "approval, then the new key signs; the metadata never lists two certificates.",
    )
    refresh_wait_seconds: float = Field(
        default=0,
        ge=0,
        description="Wait at least this long for identity providers to read the metadata again, whatever its "
        "cacheDuration and validUntil say (an IdP that refreshes on a schedule of its own).",
    )
    grace_seconds: float = Field(
        default=300,
        ge=0,
        description="How long the old key keeps decrypting once identity providers have stopped encrypting to its "
        "certificate (assertions in flight, clocks).",
    )

    @field_validator("certificate")
    @classmethod
    def _subject_parses(cls, profile: CertificateProfile) -> CertificateProfile:
        try:
            profile.name()
        except CertificateInvalid as exc:
            raise ValueError(str(exc)) from None
        return profile


def _short(kid: str) -> str:
    return kid[:12]


@runbook("saml-certificate", undos=[undo_saml_step], inputs=[answer_signing_request])
@flow(name="rotate-saml-certificate", log_prints=False, persist_result=False)
def rotate_saml_certificate(
    secret: str,
    service_providers: list[ServiceProvider],
    policy: SamlPolicy,
    consumers: list[Consumer] | None = None,
    options: RotationOptions | None = None,
) -> dict[str, Any]:
    """Roll over the SAML key set at ``secret`` (a store URI) of the SPs in ``service_providers``; ``consumers``
    are how they are restarted (or reloaded)."""
    profile, sps, wait_at_least = policy.certificate, service_providers, policy.refresh_wait_seconds
    with rotation(secret, options, consumers or []) as r:
        old = r.check("check-keyset", inspect_saml_keyset, secret)
        # 1. The new key decrypts, the old one still signs and is the only certificate in the metadata.
        if policy.issuer == "ca":
            r.apply(
                "request-certificate",
                request_saml_certificate,
                secret,
                r.id,
                profile,
                undo=Undo(undo_saml_step, step="request", previous_version=r.versions_before["previous"]),
            )
            csr = r.check("show-signing-request", show_new_pair, secret, r.id)
            r.await_value(
                "stage-certificate",
                f"Have the CA sign the request of key {_short(csr.kid)} ({csr.subject}; artifact "
                f"saml-new-pair-{r.id}), then: rotate stage {r.id} --from-file CERTIFICATE.pem",
                answer_signing_request,
            )
            # The request's version is PREVIOUS now, not the rotation's first CURRENT: undone as a phase of its own.
            phase1_previous = step_version(r.id, "request")
            r.apply(
                "promote",
                promote_secret,
                secret,
                r.id,
                undo=Undo(undo_saml_step, step="stage", previous_version=r.versions_before["current"]),
            )
        else:
            phase1_previous = r.versions_before["current"]
            r.stage("stage-new-pair", add_new_pair, **profile.model_dump())
            r.promote("promote")
        r.restart("restart-phase-1")
        phase1 = r.verify("phase-1-verified", verify_saml_phase, secret, sps, profile, old.signing, wait_at_least)
        new = next(kid for kid in phase1.keyset.roles if kid != old.signing)

        if policy.cutover == "hard":
            shown = r.check("show-new-certificate", show_new_pair, secret, r.id)
            r.approve(
                "approve-upload",
                f"Upload certificate {shown.fingerprint} (artifact saml-new-pair-{r.id}) at every identity provider "
                f"of {secret}, then approve: the new key signs next",
            )
            switch_undo = Undo(undo_saml_step, step="switch", previous_version=phase1_previous, consumers=r.consumers)
            r.apply("switch-signing", advance_saml_keyset, secret, r.id, "switch", undo=switch_undo)
            r.restart("restart-phase-4")
            r.verify("phase-4-verified", verify_saml_phase, secret, sps, profile, old.signing, wait_at_least)
            grace = policy.grace_seconds
        else:
            # 2. Both certificates in the metadata. Undone, the new key keeps decrypting while IdPs refresh.
            publish_undo = Undo(
                undo_saml_step,
                step="publish",
                previous_version=phase1_previous,
                consumers=r.consumers,
                refresh_seconds=phase1.idp_refresh_seconds,
            )
            r.apply("publish-new-certificate", advance_saml_keyset, secret, r.id, "publish", undo=publish_undo)
            r.restart("restart-phase-2")
            phase2 = r.verify("phase-2-verified", verify_saml_phase, secret, sps, profile, old.signing, wait_at_least)
            # 3. Every IdP must know the new certificate before the new key signs.
            r.wait("idps-refresh", phase2.idp_refresh_seconds, why="identity providers read the metadata again")
            r.approve(
                "approve-switch",
                f"Sign {secret}'s SAML requests with key {_short(new)}? Key {_short(old.signing)} keeps decrypting.",
                gate="promote",
            )
            # 4. The new key signs. Undone, the old key signs again while both certificates are still published.
            switch_undo = Undo(undo_saml_step, step="switch", previous_version=r.id, consumers=r.consumers)
            r.apply("switch-signing", advance_saml_keyset, secret, r.id, "switch", undo=switch_undo)
            r.restart("restart-phase-4")
            phase4 = r.verify("phase-4-verified", verify_saml_phase, secret, sps, profile, old.signing, wait_at_least)
            # 5a. The old certificate leaves the metadata; its key still decrypts. Undone, IdPs read it back first.
            withdraw_undo = Undo(
                undo_saml_step,
                step="withdraw",
                previous_version=step_version(r.id, "publish"),
                consumers=r.consumers,
                refresh_seconds=phase4.idp_refresh_seconds,
            )
            r.apply("withdraw-old-certificate", advance_saml_keyset, secret, r.id, "withdraw", undo=withdraw_undo)
            r.restart("restart-phase-5a")
            phase5a = r.verify("phase-5a-verified", verify_saml_phase, secret, sps, profile, old.signing, wait_at_least)
            grace = phase5a.idp_refresh_seconds + policy.grace_seconds
        r.wait("grace", grace, why="identity providers stop encrypting to the old certificate")
        # 5. The point of no return.
        r.retire(
            "drop-old-pair",
            drop_old_saml_pair,
            secret,
            r.id,
            ask=f"Remove the old SAML key {_short(old.signing)} of {secret} for good?",
        )
        r.restart("restart-after-retire")
        r.verify("new-pair-alone-verified", verify_saml_phase, secret, sps, profile, old.signing, wait_at_least)
    return {**r.summary(), "new_kid": new, "old_kid": old.signing}
