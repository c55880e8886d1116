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

from typing import Any

from prefect import flow
from pydantic import BaseModel, Field

from rotation import RotationOptions, Undo, rotation, runbook
from targets.consumers import Consumer
from targets.jwt.keyset import Algorithm
from targets.jwt.rollover import next_keyset
from tasks.jwt import (
    check_tokens,
    drop_previous_key,
    inspect_current_keyset,
    inspect_new_key,
    switch_signing_key,
    undo_switch_signing_key,
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


def _short(kid: str) -> str:
    return kid[:12]


@runbook("jwt-signing-key", undos=[undo_switch_signing_key])
@flow(name="rotate-jwt-signing-key", log_prints=False, persist_result=False)
def rotate_jwt_signing_key(
    secret: str,
    consumers: list[Consumer] | None = None,
    policy: JwtPolicy | None = None,
    options: RotationOptions | None = None,
) -> dict[str, Any]:
    """Rotate the JWT keyset stored at ``secret`` (a store URI) for the services in ``consumers``."""
    policy = policy or JwtPolicy()
    with rotation(secret, options, consumers or []) as r:
        r.check("check-keyset", inspect_current_keyset, secret)
        r.stage("stage-keyset", next_keyset, **policy.model_dump(include={"algorithm", "key_bits", "publish_first"}))
        key = r.check("find-new-key", inspect_new_key, secret, r.id)
        r.promote("promote", ask=f"Promote JWT key {_short(key.new)}? Key {_short(key.old)} keeps verifying.")
        r.restart("restart")
        r.verify("both-keys-accepted", check_tokens, secret, r.consumers, accepted=[key.new, key.old], rejected=[])
        if policy.publish_first:  # every consumer now knows the new key: it may start signing
            r.apply(
                "switch-signing-key",
                switch_signing_key,
                secret,
                r.id,
                undo=Undo(undo_switch_signing_key, previous_version=r.versions_before["current"]),
            )
            r.restart("restart-after-switch")
            r.verify("new-key-signs", check_tokens, secret, r.consumers, accepted=[key.new, key.old], rejected=[])
        r.wait("tokens-expire", policy.token_lifetime_seconds + policy.grace_seconds, why="old-key tokens expire")
        r.retire("drop-old-key", drop_previous_key, secret, r.id, ask=f"Remove the old JWT key {_short(key.old)}?")
        r.restart("restart-after-retire")
        r.verify("old-key-rejected", check_tokens, secret, r.consumers, accepted=[key.new], rejected=[key.old])
    return {**r.summary(), "new_kid": key.new, "old_kid": key.old}
