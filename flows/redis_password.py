"""Runbook: rotate a Redis ACL user's password with two valid passwords, on every node of the deployment.

1. Check every node (reachable, administrator accepted, user exists, current password works).  2. Generate a new
password and stage it.  3. Add it beside the old one on every node (as a hash) and save it.  4. Verify a login with
it on each node.  5. Approve.  6. Promote it and restart the consumers.  7. Verify again.  8. Wait the grace period.
9. Approve (optional).  10. Remove the old password on every node.  11. Verify that the old one is refused.
Any failure before step 10 rolls back: the secret points at the old password, the new one is removed from every node.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from pydantic import BaseModel, Field

from rotation import RotationOptions, Undo, rotation, runbook
from targets.consumers import Consumer
from targets.redis.credential import new_password_value
from tasks.redis_acl import (
    add_password,
    inspect_redis_secret,
    logins_accepted,
    logins_refused,
    remove_added_password,
    remove_old_password,
)


class RedisPolicy(BaseModel):
    """How long the old password stays valid after consumers moved, and how strong the new one is."""

    grace_seconds: float = Field(default=300, ge=0, description="How long clients may keep using the old password.")
    password_bytes: int = Field(default=32, ge=16, le=256, description="Random bytes in the new password.")


@runbook("redis-password", undos=[remove_added_password])
@flow(name="rotate-redis-password", log_prints=False, persist_result=False)
def rotate_redis_password(
    secret: str,
    admin_secret: str,
    consumers: list[Consumer] | None = None,
    policy: RedisPolicy | None = None,
    options: RotationOptions | None = None,
) -> dict[str, Any]:
    """Rotate the password in ``secret`` (a store URI) on every node it names, as the admin in ``admin_secret``."""
    policy = policy or RedisPolicy()
    with rotation(secret, options, consumers or []) as r:
        plan = r.check("check-nodes", inspect_redis_secret, secret, admin_secret)
        r.stage("stage-password", new_password_value, length_bytes=policy.password_bytes)
        added = r.apply(
            "add-password",
            add_password,
            secret,
            r.id,
            admin_secret,
            undo=Undo(remove_added_password, admin_secret=admin_secret),
        )
        r.verify("new-password-works", logins_accepted, secret, r.id)
        r.promote(
            "promote", ask=f"Promote the new password of Redis user {plan.username} on {len(plan.nodes)} node(s)?"
        )
        r.restart("restart")
        r.verify("consumers-log-in", logins_accepted, secret, r.id)
        r.wait("grace", policy.grace_seconds, why="clients still holding the old password reconnect")
        r.retire(
            "remove-old-password",
            remove_old_password,
            secret,
            r.id,
            plan.current_version,
            admin_secret,
            ask=f"Remove the old password of Redis user {plan.username}?",
        )
        r.verify("old-password-refused", logins_refused, secret, plan.current_version)
    # "none" means a restart of that node would lose the change (also logged as a warning).
    return {**r.summary(), "persisted": {c.node: c.persisted for c in added}}
