"""Runbook: rotate a JWT signing key with two keys and a grace period.

1. Check the current keyset.  2. Generate a new key; stage the keyset with the new key signing and the old key
verifying only.  3. Approve.  4. Promote it and restart the consumers.  5. Verify: new-key tokens and old-key tokens
are both accepted.  6. Wait the longest token lifetime plus a grace period.  7. Approve (optional).  8. Remove the
old key.  9. Restart the consumers and verify that old-key tokens are rejected and new-key tokens accepted.
With ``publish_first``, step 2 stages the new key verify-only, and only once every consumer has it (step 5) does
it start signing (promoted, restarted and verified again).
Any failure before step 8 rolls everything back: the old keyset is current again and the consumers reloaded.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from prefect import flow
from pydantic import BaseModel, Field

from rotation.context import RotationOptions, Undo, rotation
from targets.consumers import Consumer
from targets.jwt.keyset import Algorithm
from tasks.jwt import (
    check_tokens,
    drop_previous_key,
    inspect_current_keyset,
    inspect_keyset_version,
    next_keyset,
    switch_signing_key,
)


class JwtPolicy(BaseModel):
    """How keys are made and how long the old one must keep verifying."""

    algorithm: Algorithm = "HS256"
    key_bits: int = Field(default=512, ge=256, multiple_of=8, description="HS256 secret length; at least 256 bits.")
    token_lifetime_seconds: float = Field(default=3600, ge=0, description="The longest lifetime of an issued token.")
    publish_first: bool = Field(
        default=False,
        description="Publish the new key verify-only to every consumer before any consumer signs with it. Use it "
        "when a consumer runs as several instances that restart one by one (a rolling restart): otherwise an "
        "instance still on the old keyset rejects tokens signed by an instance already on the new one.",
    )
    grace_seconds: float = Field(default=300, ge=0, description="Extra time for clocks and caches.")


@flow(name="rotate-jwt-signing-key", log_prints=False, persist_result=False)
def rotate_jwt_signing_key(
    secret: str,
    consumers: list[Consumer] | None = None,
    policy: JwtPolicy | None = None,
    options: RotationOptions | None = None,
) -> dict[str, Any]:
    """Rotate the JWT keyset stored at ``secret`` (a store URI) for the services in ``consumers``."""
    consumers = consumers or []
    policy = policy or JwtPolicy()
    options = options or RotationOptions()

    inspect_current_keyset(secret)  # a malformed keyset stops here, before anything changes
    with rotation(secret, "jwt-signing-key", options) as r:
        r.stage(partial(next_keyset, **policy.model_dump(include={"algorithm", "key_bits", "publish_first"})))
        staged = r.verify(inspect_keyset_version, secret, r.id)
        new, old = (
            (staged.verify_only[0], staged.signing) if policy.publish_first else (staged.signing, staged.verify_only[0])
        )
        r.plan(new_kid=new, old_kid=old)
        r.approve(f"Promote JWT key {new} for {secret}? Key {old} keeps verifying.", required=options.approve_promote)
        r.promote()
        r.restart(consumers)
        r.verify(check_tokens, secret, consumers, accepted=[new, old], rejected=[])
        if policy.publish_first:  # every consumer now knows the new key: it may start signing
            r.apply(
                switch_signing_key,
                secret,
                r.id,
                undo=Undo(
                    task="tasks.jwt:undo_switch_signing_key",
                    kwargs={"secret": secret, "rotation_id": r.id, "previous_version": r.versions_before["current"]},
                ),
            )
            r.restart(consumers)
            r.verify(check_tokens, secret, consumers, accepted=[new, old], rejected=[])
        r.wait(policy.token_lifetime_seconds + policy.grace_seconds, why="tokens signed with the old key expire")
        r.approve(f"Remove the old JWT key {old} from {secret}?", required=options.approve_retire)
        r.retire(drop_previous_key, secret, r.id)
        r.restart(consumers)
        r.verify(check_tokens, secret, consumers, accepted=[new], rejected=[old])
    return r.summary()
