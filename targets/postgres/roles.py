"""Role changes on PostgreSQL as the administrator: passwords as SCRAM verifiers, identifiers via ``psycopg2.sql``.

The alternating-users layout: one NOLOGIN owner role owns the application's objects and holds its privileges; two
login users (``app`` and ``app_clone``) are members of it and start every session as it
(``ALTER ROLE ... SET role = owner``), so whatever either creates is owned by the owner role and stays usable by the
other. Adoption, in one transaction and without a gap for any login: the user that owns the objects (``app``, a
single user or the base user of AWS's multi-user layout) is renamed to the owner role (keeping its objects, grants,
memberships and attributes) and a login user with its old name and its SCRAM verifier is created as a member; an
existing ``app_clone`` (a member of ``app``, as AWS's multi-user function creates it, so now of the owner role)
gets the owner's attributes and starts its sessions as the owner; and what either login owns is handed to the owner
role (the ownership repair), so nothing created by the clone is out of the other user's reach.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg2
import psycopg2.extensions
from psycopg2 import sql
from pydantic import BaseModel

from errors import NotFound, PermissionDenied
from redaction import register_secret
from targets.postgres.login import PostgresRotationError

Connection = psycopg2.extensions.connection

# Attributes a login user of the application may need (not SUPERUSER: never handed out by a rotation).
_CARRIED = {
    "rolcreatedb": "CREATEDB",
    "rolcreaterole": "CREATEROLE",
    "rolreplication": "REPLICATION",
    "rolbypassrls": "BYPASSRLS",
}


class UnknownUser(PostgresRotationError, NotFound):
    """The user to rotate does not exist."""


class NotPermitted(PostgresRotationError, PermissionDenied):
    """The administrator may not do what the runbook needs."""


class RoleInfo(BaseModel):
    """What the runbook needs to know about a role: no password, no verifier."""

    name: str
    exists: bool
    can_login: bool = False
    attributes: list[str] = []
    connection_limit: int = -1
    settings: list[str] = []  # ALTER ROLE ... SET entries ("search_path=app"), without "role"
    acts_as: str | None = None  # its ALTER ROLE ... SET role entry: the role its sessions start as
    member_of: list[str] = []


def verifier(conn: Connection, username: str, password: str) -> str:
    """The SCRAM-SHA-256 verifier of ``password``, computed client-side: the password never reaches the server."""
    return register_secret(psycopg2.extensions.encrypt_password(password, username, conn, "scram-sha-256"))


def role_info(conn: Connection, name: str) -> RoleInfo:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT rolcanlogin, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls, rolconnlimit "
            "FROM pg_roles WHERE rolname = %s",
            (name,),
        )
        row = cur.fetchone()
        if row is None:
            return RoleInfo(name=name, exists=False)
        cur.execute(
            "SELECT unnest(setconfig) FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole "
            "WHERE r.rolname = %s AND s.setdatabase = 0",
            (name,),
        )
        entries = [s for (s,) in cur.fetchall()]
        settings = [s for s in entries if not s.startswith("role=")]
        acts_as = next((s.removeprefix("role=") for s in entries if s.startswith("role=")), None)
        cur.execute(
            "SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid "
            "JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = %s ORDER BY 1",
            (name,),
        )
        member_of = [g for (g,) in cur.fetchall()]
    attributes = [keyword for (column, keyword), value in zip(_CARRIED.items(), row[1:5], strict=True) if value]
    return RoleInfo(
        name=name,
        exists=True,
        can_login=row[0],
        attributes=attributes,
        connection_limit=row[5],
        settings=settings,
        acts_as=acts_as,
        member_of=member_of,
    )


def admin_may_manage_roles(conn: Connection) -> bool:
    with conn.cursor() as cur:
        cur.execute("SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user")
        row = cur.fetchone()
    return bool(row and row[0])


def _settings(conn: Connection, name: str, settings: list[str]) -> None:
    with conn.cursor() as cur:
        for entry in settings:
            key, _, value = entry.partition("=")
            cur.execute(
                sql.SQL("ALTER ROLE {} SET {} = %s").format(sql.Identifier(name), sql.Identifier(key)), (value,)
            )


def create_login_user(conn: Connection, name: str, owner: str, like: RoleInfo) -> None:
    """Create ``name`` without LOGIN as a member of ``owner`` that acts as it, with ``like``'s attributes,
    settings and memberships. The password and LOGIN come later (``set_password``)."""
    options = sql.SQL(" ").join(sql.SQL(a) for a in like.attributes)
    with conn.cursor() as cur:
        cur.execute(
            sql.SQL("CREATE ROLE {} NOLOGIN {} CONNECTION LIMIT %s IN ROLE {}").format(
                sql.Identifier(name), options, sql.Identifier(owner)
            ),
            (like.connection_limit,),
        )
        for group in like.member_of:
            if group != owner:
                cur.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(group), sql.Identifier(name)))
        cur.execute(sql.SQL("ALTER ROLE {} SET role = %s").format(sql.Identifier(name)), (owner,))
    _settings(conn, name, like.settings)


def scram_verifier_of(conn: Connection, name: str) -> str | None:
    """The role's stored SCRAM verifier (needs a superuser), or None if it has none or it cannot be read."""
    with conn.cursor() as cur:
        try:
            cur.execute("SAVEPOINT read_verifier")
            cur.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (name,))
            row = cur.fetchone()
            cur.execute("RELEASE SAVEPOINT read_verifier")
        except psycopg2.errors.InsufficientPrivilege:
            cur.execute("ROLLBACK TO SAVEPOINT read_verifier")
            return None
    stored = row[0] if row else None
    return register_secret(stored) if stored and stored.startswith("SCRAM-SHA-256$") else None


def adopt_user(conn: Connection, user: str, owner: str, known_password: Callable[[], str | None]) -> None:
    """In the caller's transaction: rename ``user`` to ``owner`` (NOLOGIN) and recreate ``user`` as a login member
    with the same SCRAM verifier (or ``known_password()``'s where the verifier cannot be read, as on a managed
    server; else no password), so its password keeps working without a gap. A member of ``user`` (AWS's clone) is
    now a member of ``owner``."""
    info = role_info(conn, user)
    stored = scram_verifier_of(conn, user)
    password = known_password() if stored is None else None
    if password is not None:
        stored = verifier(conn, user, password)
    with conn.cursor() as cur:
        cur.execute(sql.SQL("ALTER ROLE {} RENAME TO {}").format(sql.Identifier(user), sql.Identifier(owner)))
        cur.execute(sql.SQL("ALTER ROLE {} NOLOGIN PASSWORD NULL").format(sql.Identifier(owner)))
    create_login_user(conn, user, owner, info.model_copy(update={"member_of": []}))
    with conn.cursor() as cur:
        cur.execute(
            sql.SQL("ALTER ROLE {} {} PASSWORD %s").format(
                sql.Identifier(user), sql.SQL("LOGIN" if info.can_login else "NOLOGIN")
            ),
            (stored,),
        )


def undo_adoption(conn: Connection, user: str, owner: str) -> None:
    """In the caller's transaction: the reverse of :func:`adopt_user` (the login's verifier moves back)."""
    stored = scram_verifier_of(conn, user)
    with conn.cursor() as cur:
        cur.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(user)))
        cur.execute(sql.SQL("ALTER ROLE {} RENAME TO {}").format(sql.Identifier(owner), sql.Identifier(user)))
        cur.execute(sql.SQL("ALTER ROLE {} LOGIN PASSWORD %s").format(sql.Identifier(user)), (stored,))


def join_owner(conn: Connection, login: str, owner: str) -> None:
    """In the caller's transaction: make an existing login a member of ``owner`` that starts its sessions as it,
    with the owner's attributes (AWS's clone has none of its original user's)."""
    attributes = role_info(conn, owner).attributes
    with conn.cursor() as cur:
        if owner not in role_info(conn, login).member_of:
            cur.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(owner), sql.Identifier(login)))
        if attributes:
            cur.execute(
                sql.SQL("ALTER ROLE {} {}").format(
                    sql.Identifier(login), sql.SQL(" ").join(sql.SQL(a) for a in attributes)
                )
            )
        cur.execute(sql.SQL("ALTER ROLE {} SET role = %s").format(sql.Identifier(login)), (owner,))


def leave_owner(conn: Connection, login: str) -> None:
    """The undo of :func:`join_owner` as far as it matters: the login's sessions start as itself again."""
    with conn.cursor() as cur:
        cur.execute(sql.SQL("ALTER ROLE {} RESET role").format(sql.Identifier(login)))


def hand_objects_to(conn: Connection, logins: list[str], owner: str) -> int:
    """The ownership repair, in this database: what any of ``logins`` owns becomes ``owner``'s. Returns how many
    objects changed owner."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner WHERE r.rolname = ANY(%s) "
            "AND c.relnamespace NOT IN (SELECT oid FROM pg_namespace WHERE nspname LIKE 'pg\\_%%')",
            (logins,),
        )
        moved = int(cur.fetchone()[0])
        for login in logins:
            cur.execute(sql.SQL("REASSIGN OWNED BY {} TO {}").format(sql.Identifier(login), sql.Identifier(owner)))
    return moved


def set_password(conn: Connection, name: str, password: str | None, login: bool = True) -> None:
    """Give ``name`` a password as a SCRAM verifier (None: no password) and LOGIN or NOLOGIN."""
    stored = verifier(conn, name, password) if password is not None else None
    with conn.cursor() as cur:
        cur.execute(
            sql.SQL("ALTER ROLE {} {} PASSWORD %s").format(
                sql.Identifier(name), sql.SQL("LOGIN" if login else "NOLOGIN")
            ),
            (stored,),
        )


def end_sessions(conn: Connection, name: str, started_before: str | None = None) -> int:
    """Terminate the sessions of login user ``name`` (only those begun before ``started_before``, if given)."""
    query = (
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = %s AND pid <> pg_backend_pid()"
    )
    params: tuple[Any, ...] = (name,)
    if started_before:
        query += " AND backend_start < %s::timestamptz"
        params += (started_before,)
    with conn.cursor() as cur:
        cur.execute(query, params)
        return int(cur.fetchone()[0])


def sessions_of(conn: Connection, users: list[str]) -> dict[str, int]:
    """How many client sessions each of ``users`` has open (this project's own sessions left out)."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT usename, count(*) FROM pg_stat_activity WHERE usename = ANY(%s) AND pid <> pg_backend_pid() "
            "AND backend_type = 'client backend' AND application_name <> 'secret-rotation' GROUP BY usename",
            (users,),
        )
        found = dict(cur.fetchall())
    return {user: int(found.get(user, 0)) for user in users}


def drop_login_user(conn: Connection, name: str, owner: str) -> None:
    """Drop a login user, handing anything it still owns in this database to ``owner``."""
    with conn.cursor() as cur:
        cur.execute(sql.SQL("REASSIGN OWNED BY {} TO {}").format(sql.Identifier(name), sql.Identifier(owner)))
        cur.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
        cur.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def readable_tables(conn: Connection, reference_user: str, limit: int = 100) -> list[str]:
    """Tables of this database (outside the system schemas) that ``reference_user`` may read, as qualified names."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p', 'v', 'm') "
            "AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%%' "
            "AND has_table_privilege(%s, c.oid, 'SELECT') ORDER BY 1 LIMIT %s",
            (reference_user, limit),
        )
        return [name for (name,) in cur.fetchall()]
