"""``rotate smtp``: a plain function, registered on the ``rotate`` app at the end of cli/app.py (whose shared
options it uses, so it is imported from there once they exist).

Bad input (a store URI, a policy value, a consumers file) is one line and exit status 1 before Prefect starts; a
secret that is not an SMTP credential, or a login that does not work, is refused by the runbook's first check with
one line, before anything changes.
"""

from __future__ import annotations

from typing import Annotated

import typer

from cli.output import clear_errors
from cli.rotating import (
    Approver,
    ApproveRetire,
    Consumers,
    Grace,
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


def smtp(
    secret: Annotated[
        str, typer.Argument(help="Store URI of the SMTP credential (JSON: host, port, tls, username, password)")
    ],
    consumers_file: Consumers = None,
    reload_url: ReloadUrl = None,
    grace: Grace = 300,
    delete_after: Annotated[
        float, typer.Option(help="SES: seconds a deactivated old access key is kept before it is deleted")
    ] = 3600,
    propagation: Annotated[
        float, typer.Option(help="SES: seconds a new access key may take to be accepted (an old one refused)")
    ] = 120,
    revoke_wait: Annotated[
        float, typer.Option(help="Set by hand: seconds to wait for the old password to be revoked at the provider")
    ] = 900,
    test_recipient: Annotated[
        str | None, typer.Option(help="Send a test message to this address through the new credential")
    ] = None,
    test_sender: Annotated[str | None, typer.Option(help="Sender of the test message (default: the recipient)")] = None,
    yes: Yes = False,
    no_approval: NoApproval = False,
    approve_retire: ApproveRetire = False,
    allow_self_approval: SelfApproval = False,
    approver: Approver = "",
    journal: JournalOption = None,
) -> None:
    """Rotate SMTP credentials: a password set by hand at the provider (staged with `rotate stage`), or an Amazon
    SES credential from a second IAM access key."""
    from flows.smtp import SmtpPolicy, rotate_smtp_credentials

    with clear_errors():
        policy = SmtpPolicy(
            grace_seconds=grace,
            delete_after_seconds=delete_after,
            propagation_seconds=propagation,
            revoke_wait_seconds=revoke_wait,
            test_recipient=test_recipient,
            test_sender=test_sender,
        )
        open_store(secret)  # a malformed store URI is one line here, before Prefect starts
        consumers = consumers_from(consumers_file, reload_url, None)
        options = rotation_options(no_approval, approve_retire, allow_self_approval, journal, yes, approver)
        launch(
            secret,
            lambda: rotate_smtp_credentials(secret, consumers=consumers, policy=policy, options=options),
            options.journal,
        )
