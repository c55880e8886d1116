"""Steps of the PostgreSQL credentials runbook: inspect, repair, prepare users, set a password, verify, retire.

Each task takes store URIs and version ids, reads the credentials itself, and returns names, ids and timings: never
a password or a verifier. The administrator's credentials come from their own secret (``masterarn`` or a
parameter). Undo steps re-derive what they restore from the secret's own versions (see ``restore_login_password``),
so no copy of a password or a SCRAM verifier is kept anywhere else, the journal included.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg2
from prefect import task
from prefect.cache_policies import NO_CACHE
from psycopg2 import sql
from pydantic import BaseModel

from errors import CheckFailed
from stores import Stage, open_store
from stores.errors import VersionNotFound
from targets.postgres.credential import PgCredential, PgSecretInvalid, parse_credential
from targets.postgres.login import PostgresRotationError, connection, login_works
from targets.postgres.roles import (
    Connection,
    NotPermitted,
    UnknownUser,
    admin_may_manage_roles,
    adopt_single_user,
    create_login_user,
    drop_login_user,
    end_sessions,
    readable_tables,
    role_info,
    set_password,
    undo_adoption,
    verifier,
)
from tasks import retry_if_transient, run_logger

_RETRY = {"retries": 2, "retry_delay_seconds": [1, 3], "retry_condition_fn": retry_if_transient}


class PrivilegeCheckFailed(PostgresRotationError, CheckFailed):
    """The new login cannot do what the application needs."""


class RetiredLoginWorks(PostgresRotationError, CheckFailed):
    """A credential that was retired still logs in."""


class PgPlan(BaseModel):
    """What the runbook found before changing anything: names, ids and flags only."""

    strategy: str
    admin_secret: str
    server: str
    current_version: str
    previous_version: str | None
    current_user: str
    target_user: str
    owner_role: str | None
    adopt: bool  # alternating-users: the owner role does not exist yet; the current user is adopted
    create_target: bool
    target_could_login: bool
    restore_version: str | None  # the version holding the target user's password before this rotation
    repair: bool  # the CURRENT secret's password no longer logs in (changed by hand)


def _version(secret: str, version_id: str) -> PgCredential:
    return parse_credential(open_store(secret).read_version(version_id), f"version {version_id} of {secret}")


def _admin_secret(credential: PgCredential, admin_secret: str | None, secret: str) -> str:
    resolved = admin_secret or credential.masterarn
    if not resolved:
        raise PgSecretInvalid(
            f"{secret} names no administrator secret: set masterarn in it to the store URI of the admin secret, "
            "or pass admin_secret"
        )
    return resolved


@contextmanager
def _admin(credential: PgCredential, admin_secret: str) -> Iterator[Connection]:
    """An administrator connection to the credential's server and database, with the credential's TLS settings."""
    admin = parse_credential(open_store(admin_secret).read(Stage.CURRENT), f"the administrator secret {admin_secret}")
    with connection(credential, admin.username, admin.secret, "administrator") as conn:
        yield conn


@task(cache_policy=NO_CACHE, **_RETRY)
def inspect_postgres_secret(
    secret: str, admin_secret: str | None, strategy: str, clone_suffix: str, owner_role: str | None
) -> PgPlan:
    """Before anything changes: the secret parses, the administrator logs in and may manage roles, the user exists.

    A refused login with the CURRENT secret is not an error: the rotation repairs it (``repair``).
    """
    store = open_store(secret)
    description = store.describe()
    current_version = description.version_at(Stage.CURRENT)
    if current_version is None:
        raise VersionNotFound(f"{secret} has no CURRENT version; store the PostgreSQL credential first")
    current = _version(secret, current_version)
    admin_uri = _admin_secret(current, admin_secret, secret)
    server = f"postgres://{current.host}:{current.port}/{current.dbname}"
    with _admin(current, admin_uri) as conn:
        if not admin_may_manage_roles(conn):
            raise NotPermitted(f"{server}: the administrator in {admin_uri} has neither SUPERUSER nor CREATEROLE")
        user = role_info(conn, current.username)
        if not user.exists:
            raise UnknownUser(
                f"{server} has no user {current.username!r} (named by {secret}); create it or fix the username"
            )
        base = current.username.removesuffix(clone_suffix)
        if strategy == "single-user":
            target, owner, adopt = current.username, None, False
        else:
            target = base if current.username != base else base + clone_suffix
            owner = owner_role or f"{base}_owner"
            adopt = not role_info(conn, owner).exists
        target_info = role_info(conn, target)
        conn.rollback()
    restore_version = current_version if strategy == "single-user" else None
    previous_version = description.version_at(Stage.PREVIOUS)
    if restore_version is None and previous_version and _version(secret, previous_version).username == target:
        restore_version = previous_version
    repair = not login_works(current, current.username, current.secret)
    if repair:
        run_logger(__name__).warning(
            "%s: the CURRENT secret %s no longer logs in as %r (its password was changed outside the rotation); "
            "it will be repaired with the administrator credentials",
            server,
            secret,
            current.username,
        )
    return PgPlan(
        strategy=strategy,
        admin_secret=admin_uri,
        server=server,
        current_version=current_version,
        previous_version=previous_version,
        current_user=current.username,
        target_user=target,
        owner_role=owner,
        adopt=adopt,
        create_target=not target_info.exists,
        target_could_login=target_info.can_login,
        restore_version=restore_version,
        repair=repair,
    )


@task(cache_policy=NO_CACHE, **_RETRY)
def repair_current_login(secret: str, version_id: str, admin_secret: str) -> bool:
    """Put the password of version ``version_id`` back on its user if it no longer logs in; True if it did."""
    current = _version(secret, version_id)
    if login_works(current, current.username, current.secret):
        return False
    with _admin(current, admin_secret) as conn:
        if not role_info(conn, current.username).exists:
            raise UnknownUser(f"user {current.username!r} disappeared from {current.host}:{current.port}")
        set_password(conn, current.username, current.secret, login=True)
        conn.commit()
    run_logger(__name__).warning("Repaired the login of %r: it matches the CURRENT secret again", current.username)
    return True


@task(cache_policy=NO_CACHE, **_RETRY)
def prepare_alternating_users(secret: str, version_id: str, admin_secret: str, plan: PgPlan) -> list[str]:
    """Make the owner role and both login users exist (idempotent): adopt a single user, create the other one.

    Returns what was done (names only).
    """
    if not plan.owner_role:
        raise PostgresRotationError("the alternating-users strategy needs an owner role; the plan has none")
    current = _version(secret, version_id)
    done: list[str] = []
    with _admin(current, admin_secret) as conn:
        if not role_info(conn, plan.owner_role).exists:
            adopt_single_user(conn, plan.current_user, plan.owner_role, current.secret)
            done.append(f"adopted {plan.current_user} under owner role {plan.owner_role}")
        if not role_info(conn, plan.target_user).exists:
            create_login_user(conn, plan.target_user, plan.owner_role, role_info(conn, plan.current_user))
            done.append(f"created {plan.target_user} as a member of {plan.owner_role}")
        conn.commit()
    for line in done:
        run_logger(__name__).info("%s", line)
    return done


@task(cache_policy=NO_CACHE, **_RETRY)
def unprepare_alternating_users(
    secret: str, rotation_id: str, admin_secret: str, user: str, target: str, owner: str, adopted: bool, created: bool
) -> list[str]:
    """The undo of :func:`prepare_alternating_users`: drop the user it created, undo an adoption. Idempotent."""
    store = open_store(secret)
    if store.describe().version_at(Stage.CURRENT) == rotation_id:
        raise PostgresRotationError(f"rotation {rotation_id} is CURRENT in {secret}; revert the secret first")
    current = parse_credential(store.read(Stage.CURRENT), f"the CURRENT version of {secret}")
    done: list[str] = []
    with _admin(current, admin_secret) as conn:
        if created and role_info(conn, target).exists:
            conn.rollback()  # end the transaction role_info opened before switching to autocommit
            conn.autocommit = True
            set_password(conn, target, None, login=False)
            end_sessions(conn, target)
            conn.autocommit = False
            drop_login_user(conn, target, owner)
            done.append(f"dropped {target}")
        owner_info = role_info(conn, owner)
        if adopted and owner_info.exists and role_info(conn, user).exists:
            undo_adoption(conn, user, owner)
            done.append(f"merged {owner} back into {user}")
        conn.commit()
        if done:
            with conn.cursor() as cur:  # sessions of a dropped login user have no role any more
                cur.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usesysid IS NOT NULL "
                    "AND usesysid NOT IN (SELECT oid FROM pg_roles)"
                )
            conn.commit()
    return done


@task(cache_policy=NO_CACHE, **_RETRY)
def set_login_password(secret: str, rotation_id: str, admin_secret: str) -> str:
    """Give the staged version's user its password (as a SCRAM verifier) and LOGIN; returns the user's name."""
    new = _version(secret, rotation_id)
    with _admin(new, admin_secret) as conn:
        if not role_info(conn, new.username).exists:
            raise UnknownUser(f"user {new.username!r} does not exist on {new.host}:{new.port}; resume the rotation")
        set_password(conn, new.username, new.secret, login=True)
        conn.commit()
    return new.username


@task(cache_policy=NO_CACHE, **_RETRY)
def restore_login_password(
    secret: str, rotation_id: str, admin_secret: str, user: str, could_login: bool, restore_version: str | None
) -> str:
    """The undo of :func:`set_login_password`: the user's login as it was before the rotation. Idempotent.

    The password is re-derived from ``restore_version`` (the secret's version that held this user's password)
    instead of saving the old verifier: the secret store already keeps that value safely, so no second copy is
    made. A user whose password was not in the secret gets none (nobody could have known it).
    """
    store = open_store(secret)
    if store.describe().version_at(Stage.CURRENT) == rotation_id:
        raise PostgresRotationError(f"rotation {rotation_id} is CURRENT in {secret}; revert the secret first")
    current = parse_credential(store.read(Stage.CURRENT), f"the CURRENT version of {secret}")
    password = _version(secret, restore_version).secret if restore_version else None
    if password is not None and could_login and login_works(current, user, password):
        return "unchanged"  # its password was never changed, or was already put back
    with _admin(current, admin_secret) as conn:
        if not role_info(conn, user).exists:
            return "absent"
        conn.rollback()  # end the transaction role_info opened before switching to autocommit
        conn.autocommit = True
        set_password(conn, user, password, login=could_login)
        if not could_login:
            end_sessions(conn, user)
    return "restored"


@task(cache_policy=NO_CACHE, **_RETRY)
def change_password_and_promote(secret: str, rotation_id: str, admin_secret: str) -> dict[str, str | float]:
    """Single user: set the new password and promote the secret at once; returns the change time and the window.

    Everything is prepared before the change (connection, verifier, store), so the only work between the two is
    one ALTER ROLE commit and one store promotion: that is the window in which a new login can fail.
    """
    store = open_store(secret)
    new = _version(secret, rotation_id)
    with _admin(new, admin_secret) as conn:
        conn.rollback()  # end the transaction role_info opened before switching to autocommit
        conn.autocommit = True
        statement = sql.SQL("ALTER ROLE {} LOGIN PASSWORD %s").format(sql.Identifier(new.username))
        stored = verifier(conn, new.username, new.secret)
        with conn.cursor() as cur:
            started = time.perf_counter()
            cur.execute(statement, (stored,))
            store.promote(rotation_id)
            window = time.perf_counter() - started
            cur.execute("SELECT clock_timestamp()::text")
            changed_at = cur.fetchone()[0]
    run_logger(__name__).info("Password of %r changed and promoted; window %.1f ms", new.username, window * 1000)
    return {"changed_at": changed_at, "window_ms": round(window * 1000, 3)}


@task(cache_policy=NO_CACHE, **_RETRY)
def restore_single_user(
    secret: str, rotation_id: str, admin_secret: str, user: str, old_version: str, previous_version: str | None
) -> str:
    """The undo of :func:`change_password_and_promote`: the old password back, then the secret back, back to back.

    The password is re-derived from ``old_version`` (see :func:`restore_login_password` for why).
    """
    store = open_store(secret)
    old = _version(secret, old_version)
    if login_works(old, user, old.secret):  # never changed (or already restored): only the secret goes back
        store.revert(rotation_id, previous_version)
        return "unchanged"
    with _admin(old, admin_secret) as conn:
        if not role_info(conn, user).exists:
            raise UnknownUser(f"user {user!r} disappeared from {old.host}:{old.port}; restore it by hand")
        conn.rollback()  # end the transaction role_info opened before switching to autocommit
        conn.autocommit = True
        statement = sql.SQL("ALTER ROLE {} LOGIN PASSWORD %s").format(sql.Identifier(user))
        stored = verifier(conn, user, old.secret)
        with conn.cursor() as cur:
            cur.execute(statement, (stored,))
            store.revert(rotation_id, previous_version)
    return "restored"


def _checks(conn: Connection, checks: list[str], reference_user: str) -> list[sql.Composable]:
    if not checks:
        return [sql.SQL("SELECT FROM {} LIMIT 1").format(sql.SQL(t)) for t in readable_tables(conn, reference_user)]
    statements: list[sql.Composable] = []
    for check in checks:
        parts = check.split(".")
        if all(p.isidentifier() for p in parts) and len(parts) <= 2:
            statements.append(sql.SQL("SELECT FROM {} LIMIT 1").format(sql.Identifier(*parts)))
        else:
            statements.append(sql.SQL(check))
    return statements


@task(cache_policy=NO_CACHE, **_RETRY)
def privileges_work(
    secret: str, version_id: str, checks: list[str], reference_user: str, owner_role: str | None
) -> list[str]:
    """Log in with version ``version_id`` and run the privilege checks (rolled back); returns what was checked.

    With alternating users the session must also act as the owner role, so that what it creates is shared.
    """
    credential = _version(secret, version_id)
    where = f"postgres://{credential.host}:{credential.port}/{credential.dbname}"
    with connection(credential, credential.username, credential.secret, "application") as conn:
        statements = _checks(conn, checks, reference_user)
        done: list[str] = []
        with conn.cursor() as cur:
            if owner_role:
                cur.execute("SELECT current_user")
                acting = cur.fetchone()[0]
                if acting != owner_role:
                    raise PrivilegeCheckFailed(
                        f"{where}: user {credential.username!r} acts as {acting!r}, not as the owner role "
                        f"{owner_role!r}; objects it creates would not be shared"
                    )
            for statement in statements:
                text = statement.as_string(conn)
                try:
                    cur.execute(statement)
                except psycopg2.Error as exc:
                    conn.rollback()
                    raise PrivilegeCheckFailed(
                        f"{where}: user {credential.username!r} failed the privilege check {text!r} "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0]}); grant it what the application needs"
                    ) from None
                done.append(text)
        conn.rollback()
    return done


@task(cache_policy=NO_CACHE, **_RETRY)
def login_refused(secret: str, version_id: str) -> str:
    """The (retired) credential of ``version_id`` no longer logs in; returns its user name."""
    credential = _version(secret, version_id)
    if login_works(credential, credential.username, credential.secret):
        raise RetiredLoginWorks(
            f"user {credential.username!r} still logs in with the retired credential of version {version_id}"
        )
    return credential.username


@task(cache_policy=NO_CACHE, **_RETRY)
def retire_user(secret: str, rotation_id: str, admin_secret: str, user: str, owner: str, mode: str) -> str:
    """Alternating users: disable or drop the previous user and end its sessions (``keep``: nothing). Idempotent."""
    if mode == "keep" or user == _version(secret, rotation_id).username:
        return "kept"
    current = _version(secret, rotation_id)
    with _admin(current, admin_secret) as conn:
        if not role_info(conn, user).exists:
            return "absent"
        conn.rollback()  # end the transaction role_info opened before switching to autocommit
        conn.autocommit = True
        set_password(conn, user, None, login=False)  # first, so that ended sessions cannot log in again
        ended = end_sessions(conn, user)
        if mode == "drop":
            conn.autocommit = False
            drop_login_user(conn, user, owner)
            conn.commit()
    run_logger(__name__).info("Retired user %r (%s); %d session(s) ended", user, mode, ended)
    return mode


@task(cache_policy=NO_CACHE, **_RETRY)
def end_old_sessions(secret: str, rotation_id: str, admin_secret: str, changed_at: str, mode: str) -> int:
    """Single user: end the sessions begun before the password change (``keep``: none). Returns how many."""
    if mode == "keep":
        return 0
    current = _version(secret, rotation_id)
    with _admin(current, admin_secret) as conn:
        conn.rollback()  # end the transaction role_info opened before switching to autocommit
        conn.autocommit = True
        return end_sessions(conn, current.username, started_before=changed_at)
