"""The same password change on every node of a Redis deployment, all or nothing.

A change is checked on every node first (reachable, administrator accepted, user exists), so bad input changes
nothing; a failure half-way removes the new password again from the nodes already changed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import redis
from pydantic import BaseModel

from errors import CheckFailed
from targets.redis.credential import RedisNode, TlsSettings
from targets.redis.nodes import (
    LoginRefused,
    NodeUnreachable,
    Persistence,
    RedisRotationError,
    add_hash,
    connect,
    login_works,
    password_hashes,
    persist,
    remove_hash,
    requirepass_is_set,
)


class NodeChange(BaseModel):
    """What happened on one node: safe to log and return (no password, no hash)."""

    node: str
    changed: bool
    persisted: Persistence


class LoginCheckFailed(RedisRotationError, CheckFailed):
    """A login that should work was refused, or one that should be refused worked."""


@dataclass(frozen=True)
class Fleet:
    """The nodes of one deployment and the administrator who may change their ACL users."""

    nodes: tuple[RedisNode, ...]
    tls: TlsSettings
    admin_username: str
    admin_passwords: tuple[str, ...]  # tried in order: the admin secret's CURRENT, then its PREVIOUS

    def admin(self, node: RedisNode) -> redis.Redis:
        """An administrator connection; the next candidate password is tried only when a login is refused."""
        refused: LoginRefused | None = None
        for password in self.admin_passwords:
            try:
                return connect(node, self.tls, self.admin_username, password, role="administrator")
            except LoginRefused as exc:
                refused = exc
        assert refused is not None, "a Fleet needs at least one administrator password"
        raise refused

    def __repr__(self) -> str:
        return f"Fleet({[n.address for n in self.nodes]}, admin={self.admin_username!r})"


def _warn_unsaved(changes: list[NodeChange], username: str, logger: logging.Logger) -> None:
    for change in changes:
        if change.changed and change.persisted == "none":
            logger.warning(
                "%s has neither an ACL file nor a config file: the password change of user %r lives only in memory "
                "and a restart of that server would lose it; start it with --aclfile or a config file",
                change.node,
                username,
            )


def check_fleet(fleet: Fleet, username: str) -> None:
    """Every node answers, accepts the administrator and has the user; otherwise raise before anything changes."""
    for node in fleet.nodes:
        with fleet.admin(node) as admin:
            password_hashes(admin, node, username)


def _on_each(
    fleet: Fleet, nodes: list[RedisNode], step: Callable[[redis.Redis, RedisNode], NodeChange], what: str
) -> list[NodeChange]:
    """Run ``step`` on every node, going on after a failure so that as many nodes as possible are handled."""
    changes: list[NodeChange] = []
    errors: list[RedisRotationError] = []
    for node in nodes:
        try:
            with fleet.admin(node) as admin:
                changes.append(step(admin, node))
        except RedisRotationError as exc:
            errors.append(exc)
    if errors:
        # Only unreachable nodes: a retry may succeed, so keep the error transient.
        kind = NodeUnreachable if all(isinstance(e, NodeUnreachable) for e in errors) else RedisRotationError
        raise kind(f"{what} failed on {len(errors)} of {len(nodes)} nodes: {'; '.join(map(str, errors))}")
    return changes


def remove_password(
    fleet: Fleet, username: str, password_hash: str, logger: logging.Logger, nodes: list[RedisNode] | None = None
) -> list[NodeChange]:
    """Remove a password (by hash) wherever it is; a node without it is left alone. Idempotent (the undo)."""

    def step(admin: redis.Redis, node: RedisNode) -> NodeChange:
        changed = remove_hash(admin, node, username, password_hash)
        return NodeChange(
            node=node.address, changed=changed, persisted=persist(admin, node, username) if changed else "none"
        )

    what = f"removing a password of user {username!r}"
    changes = _on_each(fleet, list(fleet.nodes if nodes is None else nodes), step, what)
    _warn_unsaved(changes, username, logger)
    return changes


def add_password(fleet: Fleet, username: str, password_hash: str, logger: logging.Logger) -> list[NodeChange]:
    """Add a password (by hash) on every node and save it; all or nothing."""
    check_fleet(fleet, username)
    touched: list[RedisNode] = []
    changes: list[NodeChange] = []
    try:
        for node in fleet.nodes:
            with fleet.admin(node) as admin:
                touched.append(node)  # before the change: its save may fail after Redis took it
                changed = add_hash(admin, node, username, password_hash)
                changes.append(NodeChange(node=node.address, changed=changed, persisted=persist(admin, node, username)))
    except RedisRotationError as exc:
        try:
            undone = remove_password(fleet, username, password_hash, logger, nodes=touched)
        except RedisRotationError as undo_exc:
            raise type(exc)(f"{exc}. Removing the new password again also failed: {undo_exc}") from None
        where = ", ".join(c.node for c in undone if c.changed) or "no node (it had not been added anywhere)"
        raise type(exc)(f"{exc}. Nothing is left changed: the new password was removed again from {where}") from None
    _warn_unsaved(changes, username, logger)
    return changes


def retire_password(
    fleet: Fleet, username: str, old_hash: str, new_hash: str, logger: logging.Logger
) -> list[NodeChange]:
    """Remove the old password everywhere, refusing on a node where the new one is missing (it would lock out)."""

    def step(admin: redis.Redis, node: RedisNode) -> NodeChange:
        hashes = password_hashes(admin, node, username)
        if new_hash not in hashes:
            raise RedisRotationError(
                f"{node.address}: user {username!r} does not have the new password; the old one is kept so that "
                "clients can still log in. Resume the rotation after checking that node"
            )
        if old_hash not in hashes:
            return NodeChange(node=node.address, changed=False, persisted="none")
        remove_hash(admin, node, username, old_hash)
        if username == "default" and requirepass_is_set(admin, node):
            # Setting requirepass would put the new password in plain text into the config file: hashes only.
            logger.warning(
                "%s: the requirepass setting still holds the retired password (it no longer logs in: the ACL user "
                "line that CONFIG REWRITE saved wins at start-up); replace the requirepass line by ACL users",
                node.address,
            )
        return NodeChange(node=node.address, changed=True, persisted=persist(admin, node, username))

    if old_hash == new_hash:
        return [NodeChange(node=n.address, changed=False, persisted="none") for n in fleet.nodes]
    changes = _on_each(fleet, list(fleet.nodes), step, f"retiring the old password of user {username!r}")
    _warn_unsaved(changes, username, logger)
    return changes


def check_logins(nodes: list[RedisNode], tls: TlsSettings, username: str, password: str, accepted: bool) -> list[str]:
    """Log in as ``username`` on every node; raise unless each one accepts (or refuses) as expected."""
    wrong = [n.address for n in nodes if login_works(n, tls, username, password) != accepted]
    if wrong:
        expected, got = ("accept", "refused") if accepted else ("refuse", "accepted")
        raise LoginCheckFailed(
            f"user {username!r}: {', '.join(wrong)} {got} a login that should {expected}; the rotation cannot go on"
        )
    return [n.address for n in nodes]
