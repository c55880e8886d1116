"""Runbook: rotate a PostgreSQL application credential, with alternating users (default) or a single user.

Alternating users (no failed login): 1. Check the secret, the administrator and the user; note a password changed
by hand.  2. Repair it if so.  3. Stage a new password for the user not in use (``app`` / ``app_clone``).
4. Make both users members of one owner role that owns the objects (adopting a single user the first time).
5. Give the other user the new password.  6. Verify its login and privileges.  7. Approve.  8. Promote; restart the
consumers; verify again.  9. Wait the grace period.  10. Approve (optional).  11. Retire the previous user
(keep, disable or drop).
Single user: the same checks, then approve, stage, and change the password and promote the secret back to back
(the short window in which a new login can fail); restart, verify, wait, end the sessions begun with the old one.
Any failure before the retirement rolls back: the secret points at the old user, a password changed or a user
created by the rotation is put back.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Literal

from prefect import flow
from pydantic import BaseModel, Field

from rotation.context import Rotation, RotationOptions, Undo, rotation
from targets.consumers import Consumer
from targets.postgres.credential import new_login_value
from tasks.postgres import (
    PgPlan,
    change_password_and_promote,
    end_old_sessions,
    inspect_postgres_secret,
    login_refused,
    prepare_alternating_users,
    privileges_work,
    repair_current_login,
    retire_user,
    set_login_password,
)


class PgPolicy(BaseModel):
    """The runbook's choices; every field has a safe default."""

    strategy: Literal["alternating-users", "single-user"] = Field(
        default="alternating-users",
        description="alternating-users: two login users take turns (no failed login); single-user: one password.",
    )
    clone_suffix: str = Field(default="_clone", min_length=1, description="Second login user: <user><suffix>.")
    owner_role: str | None = Field(
        default=None, description="NOLOGIN role owning the objects (default: <user>_owner); alternating-users only."
    )
    privilege_checks: list[str] = Field(
        default=[],
        description="Table names (read one row) or SQL statements the new login must be able to run; each runs in "
        "a transaction that is rolled back. Empty: every table the previous user could read.",
    )
    grace_seconds: float = Field(default=300, ge=0, description="The longest connection lifetime of the consumers.")
    retire: Literal["keep", "disable", "drop"] = Field(
        default="keep",
        description="After the grace period: keep the previous user valid until the next rotation (AWS's "
        "behaviour), disable its login, or drop it; its sessions are ended unless keep. Single-user: anything but "
        "keep ends the sessions begun with the old password.",
    )
    password_bytes: int = Field(default=32, ge=16, le=128, description="Random bytes in a new password.")


def _alternating(r: Rotation, secret: str, plan: PgPlan, policy: PgPolicy, consumers: list[Consumer]) -> None:
    admin, checks = plan.admin_secret, policy.privilege_checks
    r.stage(partial(new_login_value, username=plan.target_user, length_bytes=policy.password_bytes))
    r.apply(
        prepare_alternating_users,
        secret,
        plan.current_version,
        admin,
        plan,
        undo=Undo(
            task="tasks.postgres:unprepare_alternating_users",
            kwargs={
                "secret": secret,
                "rotation_id": r.id,
                "admin_secret": admin,
                "user": plan.current_user,
                "target": plan.target_user,
                "owner": plan.owner_role,
                "adopted": plan.adopt,
                "created": plan.create_target,
            },
        ),
    )
    r.apply(
        set_login_password,
        secret,
        r.id,
        admin,
        undo=Undo(
            task="tasks.postgres:restore_login_password",
            kwargs={
                "secret": secret,
                "rotation_id": r.id,
                "admin_secret": admin,
                "user": plan.target_user,
                "could_login": plan.target_could_login,
                "restore_version": plan.restore_version,
            },
        ),
    )
    r.verify(privileges_work, secret, r.id, checks, plan.current_user, plan.owner_role)
    r.approve(
        f"Switch {plan.server} from user {plan.current_user} to {plan.target_user}?", required=r.options.approve_promote
    )
    r.promote()
    r.restart(consumers)
    r.verify(privileges_work, secret, r.id, checks, plan.current_user, plan.owner_role)
    r.wait(policy.grace_seconds, why="consumers holding the previous user reconnect")
    r.approve(f"Retire ({policy.retire}) user {plan.current_user}?", required=r.options.approve_retire)
    r.retire(retire_user, secret, r.id, admin, plan.current_user, plan.owner_role, policy.retire)
    if policy.retire != "keep":
        r.verify(login_refused, secret, plan.current_version)


def _single_user(r: Rotation, secret: str, plan: PgPlan, policy: PgPolicy, consumers: list[Consumer]) -> float:
    admin = plan.admin_secret
    # The change is the promotion, so the approval comes before it.
    r.approve(f"Change the password of {plan.current_user} on {plan.server} now?", required=r.options.approve_promote)
    r.stage(partial(new_login_value, username=plan.current_user, length_bytes=policy.password_bytes))
    changed = r.apply(
        change_password_and_promote,
        secret,
        r.id,
        admin,
        undo=Undo(
            task="tasks.postgres:restore_single_user",
            kwargs={
                "secret": secret,
                "rotation_id": r.id,
                "admin_secret": admin,
                "user": plan.current_user,
                "old_version": plan.current_version,
                "previous_version": plan.previous_version,
            },
        ),
    )
    r.restart(consumers)
    r.verify(privileges_work, secret, r.id, policy.privilege_checks, plan.current_user, None)
    r.wait(policy.grace_seconds, why="sessions opened with the old password end")
    r.approve(
        f"End the sessions of {plan.current_user} opened with the old password?", required=r.options.approve_retire
    )
    r.retire(end_old_sessions, secret, r.id, admin, changed["changed_at"], policy.retire)
    r.verify(login_refused, secret, plan.current_version)
    return float(changed["window_ms"])


@flow(name="rotate-postgres-credentials", log_prints=False, persist_result=False)
def rotate_postgres_credentials(
    secret: str,
    admin_secret: str | None = None,
    consumers: list[Consumer] | None = None,
    policy: PgPolicy | None = None,
    options: RotationOptions | None = None,
) -> dict[str, Any]:
    """Rotate the PostgreSQL credential in ``secret`` (a store URI); the administrator comes from ``admin_secret``
    or from the secret's ``masterarn``."""
    consumers = consumers or []
    policy = policy or PgPolicy()
    options = options or RotationOptions()

    found = inspect_postgres_secret(
        secret, admin_secret, policy.strategy, policy.clone_suffix, policy.owner_role
    )  # bad input stops here, before anything changes
    with rotation(secret, "postgres-credentials", options) as r:
        plan = PgPlan.model_validate(r.plan(**found.model_dump()))
        if plan.repair:
            r.apply(repair_current_login, secret, plan.current_version, plan.admin_secret)
        if plan.strategy == "single-user":
            window_ms = _single_user(r, secret, plan, policy, consumers)
        else:
            window_ms = 0.0
            _alternating(r, secret, plan, policy, consumers)
    return {**r.summary(), "user": plan.target_user, "repaired": plan.repair, "window_ms": window_ms}
