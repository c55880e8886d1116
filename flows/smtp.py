"""Runbook: rotate an SMTP credential, set by hand at the provider or derived from an Amazon SES IAM access key.

Set by hand: 1. Check that the current login works over verified TLS.  2. Ask a person to set a new password in the
provider's console and stage it with ``rotate stage ROTATION_ID``.  3. Log in with it (and send a test message, when
configured).  4. Approve and promote it.  5. Measure whether the old password still works: a provider with one
password per user refused it from the change on, and the window consumers held a refused password is reported.
6. Restart the consumers and log in as they now do.  7. Wait the grace period.  8. Ask the person to revoke the old
password (not needed when the provider already refuses it), and wait until it is refused: the point of no return.

Amazon SES: 1. Check the login and that the IAM user has room for a second access key.  2. Create it and stage the
SMTP password derived from it.  3. Log in with it, asking again while SES learns the new key.  4-6. As above.
7. Wait the grace period.  8. Deactivate the old key (the point of no return) and check its login is refused.
9. Wait a second grace period, during which the key can still be reactivated.  10. Delete it.
Any failure before the old credential is revoked rolls back: the old credential is current again, the consumers
are restarted onto it, and an access key the rotation created is deleted.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from pydantic import BaseModel, Field

from rotation import RotationOptions, Undo, rotation, runbook
from targets.consumers import Consumer
from targets.smtp.credential import with_new_password
from tasks.smtp import (
    create_ses_access_key,
    deactivate_old_access_key,
    delete_created_access_key,
    delete_old_access_key,
    inspect_smtp_secret,
    report_password_window,
    send_smtp_test_message,
    smtp_login_accepted,
    smtp_login_refused,
)

_ADDRESS = r"^[^@\s]+@[^@\s]+$"


class SmtpPolicy(BaseModel):
    """How long the old credential stays valid, how long to wait for changes to take effect, and the test message."""

    grace_seconds: float = Field(default=300, ge=0, description="How long consumers may keep the old credential.")
    delete_after_seconds: float = Field(
        default=3600, ge=0, description="SES: how long a deactivated old access key is kept (it can be reactivated)."
    )
    propagation_seconds: float = Field(
        default=120, ge=0, description="SES: how long a new key may take to be accepted, and an old one refused."
    )
    revoke_wait_seconds: float = Field(
        default=900, ge=0, description="Set by hand: how long to wait for the person to revoke the old password."
    )
    test_recipient: str | None = Field(
        default=None, pattern=_ADDRESS, description="Send a test message here through the new credential."
    )
    test_sender: str | None = Field(
        default=None, pattern=_ADDRESS, description="The test message's sender (default: the recipient)."
    )


@runbook("smtp-credentials", undos=[delete_created_access_key], inputs=[with_new_password])
@flow(name="rotate-smtp-credentials", log_prints=False, persist_result=False)
def rotate_smtp_credentials(
    secret: str,
    consumers: list[Consumer] | None = None,
    policy: SmtpPolicy | None = None,
    options: RotationOptions | None = None,
) -> dict[str, Any]:
    """Rotate the SMTP credential stored at ``secret`` (a store URI) for the services in ``consumers``."""
    policy = policy or SmtpPolicy()
    with rotation(secret, options, consumers or []) as r:
        plan = r.check("check-login", inspect_smtp_secret, secret)
        ses = plan.path == "ses"
        if ses:
            undo = Undo(delete_created_access_key)
            key = r.apply("create-access-key", create_ses_access_key, secret, r.id, undo=undo)
        else:
            r.await_value(
                "new-password",
                f"Set a new password for {plan.username} at {plan.address} in the provider's console, then enter it "
                f"with: rotate stage {r.id}",
                with_new_password,
            )
        settle = policy.propagation_seconds if ses else 0  # one try by hand: a typo counts once towards a lockout
        r.verify("new-login-works", smtp_login_accepted, secret, r.id, settle_seconds=settle)
        if policy.test_recipient:
            sender = policy.test_sender or policy.test_recipient
            r.verify("test-message-sent", send_smtp_test_message, secret, r.id, sender, policy.test_recipient)
        new_user = key.access_key_id if ses else plan.username
        r.promote("promote", ask=f"Promote the new SMTP credential of {new_user} at {plan.address}?")
        if not ses:
            old = plan.current_version
            window = r.check("password-window", report_password_window, secret, r.id, old, plan.checked_at)
        r.restart("restart")
        r.verify("consumers-log-in", smtp_login_accepted, secret, r.id)
        r.wait("grace", policy.grace_seconds, why="consumers still holding the old credential move to the new one")
        if ses:
            r.retire(
                "deactivate-old-key",
                deactivate_old_access_key,
                secret,
                r.id,
                plan.current_version,
                ask=f"Deactivate access key {plan.username} of IAM user {plan.iam_user}? Its SMTP password stops "
                "working.",
            )
            r.verify("old-login-refused", smtp_login_refused, secret, plan.current_version, settle_seconds=settle)
            r.wait("before-delete", policy.delete_after_seconds, why="the deactivated key can still be reactivated")
            r.apply("delete-old-key", delete_old_access_key, secret, r.id, plan.current_version)
        else:
            if not window.single_password:  # the provider still accepts the old password: a person must revoke it
                r.approve(
                    "approve-revoke-old-password",
                    f"Revoke the old password of {plan.username} at {plan.address}? Approve, then revoke it in the "
                    f"provider's console within {policy.revoke_wait_seconds:.0f} s.",
                    person_retires=True,
                )
            r.retire(
                "old-password-revoked",
                smtp_login_refused,
                secret,
                plan.current_version,
                settle_seconds=policy.revoke_wait_seconds,
            )
    facts: dict[str, Any] = {"path": plan.path, "address": plan.address}
    if ses:
        facts |= {"new_access_key": key.access_key_id, "old_access_key": plan.username}
    else:
        facts |= {"password_window": window.model_dump(mode="json")}
    return {**r.summary(), **facts}
