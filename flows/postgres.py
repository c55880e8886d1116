"""Runbook: rotate a PostgreSQL application credential, with alternating users (default) or a single user.

Alternating users (no failed login): 1. Check the secret, the administrator and the user; note a password changed
by hand.  2. Repair it if so.  3. Stage a new password for the user not in use (``app`` / ``app_clone``).
4. Make both users members of one owner role that owns the objects (adopting a single user, or AWS's ``app`` /
``app_clone`` layout, the first time; handing what the logins own to the owner role).  5. Give the other user the
new password.  6. Verify its login (retried with backoff) and privileges.  7. Approve.  8. Promote; restart the
consumers; verify again.  9. Wait the grace period.  10. Look in pg_stat_activity for sessions of the previous user
(reported, or required gone).  11. Approve (optional).  12. Retire the previous user (keep, disable or drop).
Single user: the same checks, then approve, stage, and change the password and promote the secret back to back
(the short window in which a new login can fail); restart, verify, wait, end the sessions begun with the old one.
Any failure before the retirement rolls back: the secret points at the old user, a password changed or a user
created by the rotation is put back.
"""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow
from pydantic import BaseModel, Field

from rotation import Rotation, RotationOptions, Undo, rotation, runbook
from targets.consumers import Consumer
from targets.passwords import PasswordPolicy
from targets.postgres.credential import new_login_value
from tasks.postgres import (
    PgPlan,
    change_password_and_promote,
    consumers_reconnected,
    end_old_sessions,
    inspect_postgres_secret,
    login_refused,
    prepare_alternating_users,
    privileges_work,
    repair_current_login,
    restore_login_password,
    restore_single_user,
    retire_user,
    set_login_password,
    unprepare_alternating_users,
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
    login_attempts: int = Field(
        default=5, ge=1, le=50, description="Logins tried with a new credential before it counts as refused."
    )
    login_backoff_seconds: float = Field(
        default=0.2, ge=0, le=30, description="The first wait between those attempts; it doubles each time."
    )
    reconnect_check: Literal["off", "report", "require"] = Field(
        default="report",
        description="Alternating users, before retiring the previous user: look in pg_stat_activity for its "
        "sessions; report them, or require that none is left (waiting up to reconnect_timeout_seconds, else roll "
        "back), or do not look.",
    )
    reconnect_timeout_seconds: float = Field(default=60, ge=0, description="How long 'require' waits.")
    password: PasswordPolicy = Field(
        default_factory=PasswordPolicy, description="How new passwords are made (as AWS's GetRandomPassword)."
    )


def _alternating(r: Rotation, plan: PgPlan, policy: PgPolicy) -> None:
    secret, admin = r.secret, plan.admin_secret
    checks = (policy.privilege_checks, plan.current_user, plan.owner_role, policy.login_attempts,
              policy.login_backoff_seconds)  # fmt: skip
    r.stage("stage-password", new_login_value, username=plan.target_user, policy=policy.password)
    r.apply(
        "prepare-users",
        prepare_alternating_users,
        secret,
        plan.current_version,
        admin,
        plan,
        undo=Undo(
            unprepare_alternating_users,
            admin_secret=admin,
            user=plan.base_user,
            target=plan.target_user,
            owner=plan.owner_role,
            adopted=plan.adopt,
            created=plan.create_target,
            joined=plan.join,
        ),
    )
    r.apply(
        "set-password",
        set_login_password,
        secret,
        r.id,
        admin,
        undo=Undo(
            restore_login_password,
            admin_secret=admin,
            user=plan.target_user,
            could_login=plan.target_could_login,
            restore_version=plan.restore_version,
        ),
    )
    r.verify("new-login-works", privileges_work, secret, r.id, *checks)
    r.promote("promote", ask=f"Switch {plan.server} from user {plan.current_user} to {plan.target_user}?")
    r.restart("restart")
    r.verify("consumers-log-in", privileges_work, secret, r.id, *checks)
    r.wait("grace", policy.grace_seconds, why="consumers holding the previous user reconnect")
    if policy.reconnect_check != "off":
        required, timeout = policy.reconnect_check == "require", policy.reconnect_timeout_seconds
        adopted_as = plan.owner_role if plan.adopt and plan.current_user == plan.base_user else None
        r.verify(
            "consumers-reconnected",
            consumers_reconnected,
            secret,
            r.id,
            admin,
            plan.current_user,
            required,
            timeout,
            adopted_as,
        )
    r.retire(
        "retire-previous-user",
        retire_user,
        secret,
        r.id,
        admin,
        plan.current_user,
        plan.owner_role,
        policy.retire,
        ask=f"Retire ({policy.retire}) user {plan.current_user}?",
    )
    if policy.retire != "keep":
        r.verify("previous-login-refused", login_refused, secret, plan.current_version)


def _single_user(r: Rotation, plan: PgPlan, policy: PgPolicy) -> float:
    secret, admin = r.secret, plan.admin_secret
    # The change is the promotion, so the approval comes before it.
    r.approve("approve-change", f"Change the password of {plan.current_user} on {plan.server} now?", gate="promote")
    r.stage("stage-password", new_login_value, username=plan.current_user, policy=policy.password)
    changed = r.apply(
        "change-password-and-promote",
        change_password_and_promote,
        secret,
        r.id,
        admin,
        undo=Undo(
            restore_single_user,
            admin_secret=admin,
            user=plan.current_user,
            old_version=plan.current_version,
            previous_version=plan.previous_version,
        ),
    )
    r.restart("restart")
    r.verify(
        "consumers-log-in",
        privileges_work,
        secret,
        r.id,
        policy.privilege_checks,
        plan.current_user,
        None,
        policy.login_attempts,
        policy.login_backoff_seconds,
    )
    r.wait("grace", policy.grace_seconds, why="sessions opened with the old password end")
    r.retire(
        "end-old-sessions",
        end_old_sessions,
        secret,
        r.id,
        admin,
        changed["changed_at"],
        policy.retire,
        ask=f"End the sessions of {plan.current_user} opened with the old password?",
    )
    r.verify("old-password-refused", login_refused, secret, plan.current_version)
    return float(changed["window_ms"])


@runbook(
    "postgres-credentials",
    undos=[unprepare_alternating_users, restore_login_password, restore_single_user],
)
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
    policy = policy or PgPolicy()
    with rotation(secret, options, consumers or []) as r:
        plan = r.check(
            "check",
            inspect_postgres_secret,
            secret,
            admin_secret,
            policy.strategy,
            policy.clone_suffix,
            policy.owner_role,
            r.versions_before,
        )
        if plan.repair:
            r.apply("repair-current-login", repair_current_login, secret, plan.current_version, plan.admin_secret)
        if plan.strategy == "single-user":
            window_ms = _single_user(r, plan, policy)
        else:
            window_ms = 0.0
            _alternating(r, plan, policy)
    return {**r.summary(), "user": plan.target_user, "repaired": plan.repair, "window_ms": window_ms}
