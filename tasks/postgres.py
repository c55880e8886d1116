"""Steps of the PostgreSQL credentials runbook: inspect, repair, prepare users, set a password, verify, retire.

Each task takes store URIs and version ids, reads the credentials itself, and returns names, ids and timings: never
a password or a verifier. The administrator's credentials come from their own secret (``masterarn`` or a
parameter). Undo steps re-derive what they restore from the secret's own versions (see ``restore_login_password``),
so no copy of a password or a SCRAM verifier is kept anywhere else, the journal included.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import psycopg2
from prefect import task
from prefect.cache_policies import NO_CACHE
from psycopg2 import sql
from pydantic import BaseModel

from errors import CheckFailed
from stores import SecretURI, Stage, open_store
from stores.errors import VersionNotFound
from targets.postgres.credential import PgCredential, PgSecretInvalid, parse_credential
from targets.postgres.login import (
    LoginRefused,
    PostgresRotationError,
    login_works,
    open_connection,
    patient_connection,
)
from targets.postgres.roles import (
    Connection,
    NotPermitted,
    UnknownUser,
    admin_may_manage_roles,
    adopt_user,
    create_login_user,
    drop_login_user,
    end_sessions,
    hand_objects_to,
    join_owner,
    leave_owner,
    readable_tables,
    role_info,
    sessions_of,
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
    adopt: bool  # alternating-users: the owner role does not exist yet; the base user is adopted
    base_user: str | None = None  # alternating-users: the user whose objects the owner role takes (``app``)
    base_version: str | None = None  # the version that may hold the base user's password (if its user is the base)
    join: list[str] = []  # existing logins (AWS's clone) that are made to act as the owner role
    create_target: bool
    target_could_login: bool
    restore_version: str | None  # the version that may hold the target user's password before this rotation
    repair: bool  # the CURRENT secret's password no longer logs in (changed by hand)


def _version(secret: str, version_id: str) -> PgCredential:
    return parse_credential(open_store(secret).read_version(version_id), f"version {version_id} of {secret}")


def _password_of(secret: str, version_id: str | None, user: str) -> str | None:
    """The password of ``user`` in version ``version_id``, if that version is ``user``'s."""
    credential = _version(secret, version_id) if version_id else None
    return credential.secret if credential is not None and credential.username == user else None


def _admin_secret(credential: PgCredential, admin_secret: str | None, secret: str) -> str:
    """The administrator secret's store URI: ``admin_secret``, else ``masterarn`` (a store URI, or an AWS ARN
    found in the same AWS store as ``secret``, as AWS's rotation functions read it)."""
    resolved = admin_secret or credential.masterarn
    if not resolved:
        raise PgSecretInvalid(
            f"{secret} names no administrator secret: set masterarn in it to the store URI (or, in AWS Secrets "
            "Manager, the ARN) of the admin secret, or pass admin_secret"
        )
    if not resolved.startswith("arn:"):
        return resolved
    from stores.aws import sibling_uri  # only a secret in AWS holds an ARN; boto3 is imported for it alone

    where = SecretURI.parse(secret)
    if where.scheme != "aws":
        raise PgSecretInvalid(
            f"masterarn in {secret} is an AWS ARN, but the secret is not in AWS Secrets Manager: set masterarn to "
            "the store URI of the admin secret, or pass admin_secret"
        )
    return sibling_uri(open_store(where).uri, resolved)


# The administrator's CURRENT value last read in this process, by its secret's URI: each step of a rotation needs it,
# and a read of a stage is a store call every time. A login it no longer passes reads it afresh.
_admins: dict[str, str] = {}


def _admin_login(credential: PgCredential, admin_secret: str) -> Connection:
    def login(text: str) -> Connection:
        admin = parse_credential(text, f"the administrator secret {admin_secret}")
        return open_connection(credential, admin.username, admin.secret, "administrator")

    known = _admins.pop(admin_secret, None)
    if known is not None:
        with suppress(LoginRefused):  # rotated meanwhile: read it again
            conn = login(known)
            _admins[admin_secret] = known
            return conn
    text = open_store(admin_secret).read(Stage.CURRENT)
    conn = login(text)
    _admins[admin_secret] = text
    return conn


@contextmanager
def _admin(credential: PgCredential, admin_secret: str) -> Iterator[Connection]:
    """An administrator connection to the credential's server and database, with the credential's TLS settings."""
    conn = _admin_login(credential, admin_secret)
    try:
        yield conn
    finally:
        conn.close()


@task(cache_policy=NO_CACHE, **_RETRY)
def inspect_postgres_secret(
    secret: str,
    admin_secret: str | None,
    strategy: str,
    clone_suffix: str,
    owner_role: str | None,
    versions: dict[str, str | None],
) -> PgPlan:
    """Before anything changes: the secret parses, the administrator logs in and may manage roles, the user exists.

    ``versions``: the CURRENT and PREVIOUS version ids the rotation began from (the core has just read them).
    A refused login with the CURRENT secret is not an error: the rotation repairs it (``repair``).
    """
    current_version, previous_version = versions.get("current"), versions.get("previous")
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
        join: list[str] = []
        if strategy == "single-user":
            target, owner, adopt = current.username, None, False
        else:
            target = base if current.username != base else base + clone_suffix
            owner = owner_role or f"{base}_owner"
            adopt = not role_info(conn, owner).exists
            if adopt and not role_info(conn, base).exists:
                raise UnknownUser(
                    f"{server} has no user {base!r}, whose objects the owner role {owner!r} would take over; "
                    "create it, or name the owner role of an existing layout (owner_role)"
                )
            for login in (current.username, target):
                info = role_info(conn, login)
                if (
                    info.exists
                    and (info.acts_as != owner or owner not in info.member_of)
                    and not (adopt and login == base)
                ):
                    join.append(login)
        target_info = role_info(conn, target)
        conn.rollback()
    # Where the passwords an undo or an adoption may need are, if the secret has them: read only when needed.
    restore_version = current_version if strategy == "single-user" else previous_version
    base_version = current_version if current.username == base else previous_version
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
        base_user=None if strategy == "single-user" else base,
        base_version=base_version,
        join=join,
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
    """Make the owner role and both login users exist and act as it (idempotent): adopt the base user, make an
    existing login (AWS's clone) act as the owner, create the other one, and hand what the logins own to the owner.

    Returns what was done (names and counts only).
    """
    if not plan.owner_role:
        raise PostgresRotationError("the alternating-users strategy needs an owner role; the plan has none")
    owner, base = plan.owner_role, plan.base_user or plan.current_user
    current = _version(secret, version_id)
    done: list[str] = []
    with _admin(current, admin_secret) as conn:
        if not role_info(conn, owner).exists:
            adopt_user(conn, base, owner, lambda: _password_of(secret, plan.base_version, base))
            done.append(f"adopted {base} under owner role {owner}")
        for login in plan.join:
            info = role_info(conn, login)
            if info.exists and (info.acts_as != owner or owner not in info.member_of):
                join_owner(conn, login, owner)
                done.append(f"made {login} act as {owner}")
        if not role_info(conn, plan.target_user).exists:
            create_login_user(conn, plan.target_user, owner, role_info(conn, plan.current_user))
            done.append(f"created {plan.target_user} as a member of {owner}")
        moved = hand_objects_to(conn, [plan.current_user, plan.target_user], owner)
        if moved:
            done.append(f"handed {moved} object(s) owned by the logins to {owner}")
        conn.commit()
    for line in done:
        run_logger(__name__).info("%s", line)
    return done


@task(cache_policy=NO_CACHE, **_RETRY)
def unprepare_alternating_users(
    secret: str,
    rotation_id: str,
    admin_secret: str,
    user: str,
    target: str,
    owner: str,
    adopted: bool,
    created: bool,
    joined: list[str] | None = None,
) -> list[str]:
    """The undo of :func:`prepare_alternating_users`: drop the user it created, let the logins it made act as the
    owner act as themselves again, undo an adoption of ``user``. Idempotent. Objects handed to the owner role stay
    its (after an undone adoption, the base user's): both logins can still use them."""
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
        for login in joined or []:
            if role_info(conn, login).acts_as == owner:
                leave_owner(conn, login)
                done.append(f"{login} acts as itself again")
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
    password = _password_of(secret, restore_version, user)
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

    Everything is prepared before the change (the connection, the SCRAM verifier, the store's client and its read
    of the stage map), so the only work between the two is one ALTER ROLE commit and the one store write that moves
    CURRENT: that is the window in which a new login can fail.
    """
    store = open_store(secret)
    new = _version(secret, rotation_id)
    with _admin(new, admin_secret) as conn:
        conn.rollback()  # end the transaction role_info opened before switching to autocommit
        conn.autocommit = True
        statement = sql.SQL("ALTER ROLE {} LOGIN PASSWORD %s").format(sql.Identifier(new.username))
        stored = verifier(conn, new.username, new.secret)
        promote = store.prepare_promotion(rotation_id)  # the store's read, and its client, before the window
        with conn.cursor() as cur:
            started = time.perf_counter()
            cur.execute(statement, (stored,))
            changed = time.perf_counter()
            promote()
            window = time.perf_counter() - started
            cur.execute("SELECT clock_timestamp()::text")
            changed_at = cur.fetchone()[0]
    run_logger(__name__).info("Password of %r changed and promoted; window %.1f ms", new.username, window * 1000)
    return {
        "changed_at": changed_at,
        "window_ms": round(window * 1000, 3),
        "alter_ms": round((changed - started) * 1000, 3),  # of the window, the ALTER ROLE and its commit
    }


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
    secret: str,
    version_id: str,
    checks: list[str],
    reference_user: str,
    owner_role: str | None,
    login_attempts: int = 1,
    login_backoff_seconds: float = 0.2,
) -> list[str]:
    """Log in with version ``version_id`` and run the privilege checks (rolled back); returns what was checked.

    A refused login is tried ``login_attempts`` times with backoff before it counts as failed (propagation lag).
    With alternating users the session must also act as the owner role, so that what it creates is shared.
    """
    credential = _version(secret, version_id)
    where = f"postgres://{credential.host}:{credential.port}/{credential.dbname}"
    login = (credential, credential.username, credential.secret, "application")
    with patient_connection(*login, login_attempts, login_backoff_seconds) as conn:
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


class ConsumersStillOnOldUser(PostgresRotationError, CheckFailed):
    """Consumers still hold sessions of the user about to be retired."""


@task(cache_policy=NO_CACHE, **_RETRY)
def consumers_reconnected(
    secret: str,
    rotation_id: str,
    admin_secret: str,
    old_user: str,
    required: bool,
    timeout_seconds: float,
    adopted_as: str | None = None,
) -> dict[str, int]:
    """Before the previous user is retired: the sessions of the old and the new user, from ``pg_stat_activity``.

    ``adopted_as``: the owner role the old user was renamed to by this rotation's adoption; sessions begun before
    it show that name, and count as the old user's. ``required``: wait up to ``timeout_seconds`` for the old user's
    sessions to end, then fail (a rollback: the old user still works). Otherwise one look, reported. Returns the
    session counts by user.
    """
    new = _version(secret, rotation_id)
    users = [old_user, new.username, *([adopted_as] if adopted_as else [])]
    deadline = time.monotonic() + timeout_seconds

    def look(conn: Connection) -> dict[str, int]:
        found = sessions_of(conn, users)
        return {old_user: found[old_user] + found.get(adopted_as or "", 0), new.username: found[new.username]}

    with _admin(new, admin_secret) as conn:
        conn.autocommit = True
        counts = look(conn)
        while required and counts[old_user] and time.monotonic() < deadline:
            time.sleep(min(0.5, max(deadline - time.monotonic(), 0.0)))
            counts = look(conn)
    if counts[old_user]:
        message = (
            f"{counts[old_user]} session(s) of {old_user!r} still open on {new.host}:{new.port} "
            f"({counts[new.username]} of {new.username!r}): those consumers have not reconnected with the new user"
        )
        if required:
            raise ConsumersStillOnOldUser(f"{message} after {timeout_seconds:g} s; restart them and rotate again")
        run_logger(__name__).warning("%s", message)
    return counts


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
