"""``rotate saml``: roll a SAML service provider's certificate over, registered on the ``rotate`` app in cli/app.py.

It checks its input first (the store URI, the certificate profile, the SP's URLs), so bad input is one line and exit
status 1 before anything changes; then it runs the runbook in this process, asking its approvals at the terminal,
as ``rotate jwt`` does.
"""

from __future__ import annotations

from typing import Annotated

import typer

from cli.output import clear_errors
from cli.rotating import (
    Approver,
    ApproveRetire,
    Consumers,
    JournalOption,
    NoApproval,
    ReloadUrl,
    SelfApproval,
    Yes,
    consumers_from,
    launch,
    rotation_options,
)
from stores import open_store


def saml(
    secret: Annotated[
        str, typer.Argument(help="Store URI of the SP's SAML key set, e.g. local:///srv/store.db?secret=saml")
    ],
    subject: Annotated[str, typer.Option(help="Subject of the new certificate, e.g. 'CN=sp.example.com,O=Example'")],
    metadata_url: Annotated[str, typer.Option(help="Where the SP serves its metadata (checked at every phase)")],
    login_url: Annotated[
        list[str] | None, typer.Option(help="A URL that starts a sign-in at the SP (repeatable; one per binding)")
    ] = None,
    consumers_file: Consumers = None,
    reload_url: ReloadUrl = None,
    validity_days: Annotated[int, typer.Option(help="Validity of a self-signed certificate, days")] = 365,
    key_type: Annotated[str, typer.Option(help="rsa (3072 bits) or ec (P-256)")] = "rsa",
    ca: Annotated[
        bool, typer.Option("--ca", help="Make a signing request and wait for the CA's certificate (rotate stage)")
    ] = False,
    hard_cutover: Annotated[
        bool, typer.Option(help="One certificate at a time: a person uploads the new one at the IdP, then the switch")
    ] = False,
    refresh_wait: Annotated[
        float, typer.Option(help="Wait at least this long for IdPs to read the metadata again, seconds")
    ] = 0,
    grace: Annotated[float, typer.Option(help="How long the old key keeps decrypting after that, seconds")] = 300,
    yes: Yes = False,
    no_approval: NoApproval = False,
    approve_retire: ApproveRetire = False,
    allow_self_approval: SelfApproval = False,
    approver: Approver = "",
    journal: JournalOption = None,
) -> None:
    """Roll a SAML SP's certificate over: decrypt with both keys, publish both, wait, switch, retire the old."""
    from flows.saml import SamlPolicy, rotate_saml_certificate
    from targets.saml.certificates import CertificateProfile
    from targets.saml.sign_in import ServiceProvider

    with clear_errors():
        policy = SamlPolicy(
            certificate=CertificateProfile.of(subject=subject, validity_days=validity_days, key_type=key_type),
            issuer="ca" if ca else "self-signed",
            cutover="hard" if hard_cutover else "rollover",
            refresh_wait_seconds=refresh_wait,
            grace_seconds=grace,
        )
        open_store(secret)  # a malformed store URI is one line here, before Prefect starts
        provider = ServiceProvider(name="service-provider", metadata_url=metadata_url, login_urls=login_url or [])
        consumers = consumers_from(consumers_file, reload_url, None)
        options = rotation_options(no_approval, approve_retire, allow_self_approval, journal, yes, approver)
        launch(
            secret,
            lambda: rotate_saml_certificate(
                secret, service_providers=[provider], policy=policy, consumers=consumers, options=options
            ),
            options.journal,
        )
