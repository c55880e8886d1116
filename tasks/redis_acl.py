"""Steps of the Redis password runbook: add the new password beside the old one, check logins, remove the old one.

Each task takes store URIs and version ids, reads the passwords itself, and returns node addresses and what was
saved where: never a password or its hash. The administrator's credentials come from their own secret.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from stores import Stage, open_store
from stores.errors import VersionNotFound
from targets.redis.credential import RedisCredential, parse_credential
from targets.redis.fleet import Fleet, NodeChange, check_fleet, check_logins
from targets.redis.fleet import add_password as add_everywhere
from targets.redis.fleet import remove_password as remove_everywhere
from targets.redis.fleet import retire_password as retire_everywhere
from targets.redis.nodes import RedisRotationError
from tasks import retry_if_transient, run_logger

_RETRY = {"retries": 2, "retry_delay_seconds": [1, 5], "retry_condition_fn": retry_if_transient}


class RedisPlan(BaseModel):
    """What the runbook found before changing anything: names and ids only."""

    username: str
    nodes: list[str]
    current_version: str
    admin_username: str


def _version(secret: str, version_id: str) -> RedisCredential:
    return parse_credential(open_store(secret).read_version(version_id), f"version {version_id} of {secret}")


def _fleet(credential: RedisCredential, admin_secret: str) -> Fleet:
    store = open_store(admin_secret)
    passwords = []
    admin_username = None
    for stage in (Stage.CURRENT, Stage.PREVIOUS):
        try:
            admin = parse_credential(store.read(stage), f"the {stage} administrator secret {admin_secret}", False)
        except VersionNotFound:
            continue
        # The admin secret may be the rotated secret itself (requirepass deployments): its PREVIOUS password is
        # still the valid one while a rotation is being rolled back.
        if admin_username in (None, admin.username):
            admin_username = admin.username
            passwords.append(admin.secret)
    if admin_username is None:
        raise VersionNotFound(f"the administrator secret {admin_secret} has no CURRENT version; store one first")
    return Fleet(tuple(credential.nodes()), credential.tls_settings, admin_username, tuple(passwords))


@task(cache_policy=NO_CACHE, **_RETRY)
def inspect_redis_secret(secret: str, admin_secret: str) -> RedisPlan:
    """Before anything changes: every node answers, accepts the administrator, has the user, and accepts the
    current password."""
    store = open_store(secret)
    current_version = store.describe().version_at(Stage.CURRENT)
    if current_version is None:
        raise VersionNotFound(f"{secret} has no CURRENT version; store the Redis credential first")
    credential = _version(secret, current_version)
    fleet = _fleet(credential, admin_secret)
    check_fleet(fleet, credential.username)
    check_logins(list(fleet.nodes), fleet.tls, credential.username, credential.secret, accepted=True)
    return RedisPlan(
        username=credential.username,
        nodes=[n.address for n in fleet.nodes],
        current_version=current_version,
        admin_username=fleet.admin_username,
    )


@task(cache_policy=NO_CACHE, **_RETRY)
def add_password(secret: str, rotation_id: str, admin_secret: str) -> list[NodeChange]:
    """Add the staged password (by hash) beside the current one on every node, and save it; all or nothing."""
    new = _version(secret, rotation_id)
    return add_everywhere(_fleet(new, admin_secret), new.username, new.password_hash, run_logger(__name__))


@task(cache_policy=NO_CACHE, **_RETRY)
def remove_added_password(secret: str, rotation_id: str, admin_secret: str) -> list[NodeChange]:
    """The undo of :func:`add_password`: remove the rotation's password from every node that has it. Idempotent."""
    store = open_store(secret)
    if store.describe().version_at(Stage.CURRENT) == rotation_id:
        raise RedisRotationError(
            f"the password of rotation {rotation_id} is CURRENT in {secret}; revert the secret before removing it"
        )
    try:
        new = _version(secret, rotation_id)
    except VersionNotFound:
        return []  # nothing was staged, so nothing was added
    return remove_everywhere(_fleet(new, admin_secret), new.username, new.password_hash, run_logger(__name__))


@task(cache_policy=NO_CACHE, **_RETRY)
def logins_accepted(secret: str, version_id: str) -> list[str]:
    """Every node accepts a login with the password of ``version_id``; returns the nodes checked."""
    credential = _version(secret, version_id)
    nodes = credential.nodes()
    return check_logins(nodes, credential.tls_settings, credential.username, credential.secret, accepted=True)


@task(cache_policy=NO_CACHE, **_RETRY)
def logins_refused(secret: str, version_id: str) -> list[str]:
    """Every node refuses a login with the (retired) password of ``version_id``; returns the nodes checked."""
    credential = _version(secret, version_id)
    nodes = credential.nodes()
    return check_logins(nodes, credential.tls_settings, credential.username, credential.secret, accepted=False)


@task(cache_policy=NO_CACHE, **_RETRY)
def remove_old_password(secret: str, rotation_id: str, old_version: str, admin_secret: str) -> list[NodeChange]:
    """Remove the password of ``old_version`` from every node; the rotation's password stays. Idempotent."""
    new, old = _version(secret, rotation_id), _version(secret, old_version)
    if old.username != new.username:
        raise RedisRotationError(
            f"versions {old_version} and {rotation_id} of {secret} name different users "
            f"({old.username!r}, {new.username!r}); this runbook rotates one user's password"
        )
    fleet = _fleet(new, admin_secret)
    return retire_everywhere(fleet, new.username, old.password_hash, new.password_hash, run_logger(__name__))
