"""Talking to one Redis node: log in, read an ACL user's password hashes, add or remove one, save the change.

Password changes are sent as SHA-256 hashes (``ACL SETUSER u #hash`` / ``!hash``), so the plain password only
travels in the logins that prove it works. Errors name the node and the user, never a password or a hash.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from errors import CheckFailed, NotFound, PermissionDenied, RotationError, Unreachable
from targets.redis.credential import RedisNode, TlsSettings

Persistence = Literal["aclfile", "config", "none"]
TIMEOUT_SECONDS = 5.0


class RedisRotationError(RotationError):
    """A Redis step failed; the message names the node and the user and says what to do."""


class NodeUnreachable(RedisRotationError, Unreachable):
    """The node did not answer (retried: it may come back)."""


class LoginRefused(RedisRotationError, PermissionDenied):
    """The node refused a login (wrong password, disabled or unknown user)."""


class TlsVerificationFailed(RedisRotationError, CheckFailed):
    """The node's certificate did not verify; the runbook never falls back to plain text."""


class UnknownUser(RedisRotationError, NotFound):
    """The ACL user to rotate does not exist on a node."""


class NotPermitted(RedisRotationError, PermissionDenied):
    """The administrator user may not run a command the runbook needs."""


def _client(node: RedisNode, tls: TlsSettings, username: str, password: str) -> redis.Redis:
    options: dict[str, object] = {}
    if node.tls:
        options = {
            "ssl": True,
            "ssl_cert_reqs": "required",
            "ssl_check_hostname": True,
            "ssl_ca_certs": tls.ssl_ca_certs,
            "ssl_certfile": tls.ssl_certfile,
            "ssl_keyfile": tls.ssl_keyfile,
        }
    return redis.Redis(
        host=node.host,
        port=node.port,
        username=username,
        password=password,
        socket_timeout=TIMEOUT_SECONDS,
        socket_connect_timeout=TIMEOUT_SECONDS,
        retry=Retry(NoBackoff(), 0),  # Prefect retries the whole step; a hidden retry here would only add delay
        single_connection_client=True,
        **options,
    )


def _is_tls_failure(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError) or "CERTIFICATE_VERIFY_FAILED" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def connect(node: RedisNode, tls: TlsSettings, username: str, password: str, role: str) -> redis.Redis:
    """A logged-in connection to ``node`` as ``username`` (close it: ``with connect(...) as client``).

    ``role`` says whose login it is ("administrator", "application"), for messages.
    """
    client: redis.Redis | None = None
    try:
        client = _client(node, tls, username, password)  # a single-connection client logs in right here
        client.ping()
        return client
    except redis.AuthenticationError:
        failure: RedisRotationError = LoginRefused(
            f"{node.address} refused the login of {role} user {username!r} "
            f"(wrong password, or the user is disabled or unknown); check the {role} secret"
        )
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        if _is_tls_failure(exc):
            failure = TlsVerificationFailed(
                f"{node.address}: the server's TLS certificate did not verify for {role} user {username!r}; "
                "set ssl_ca_certs in the Redis secret to the CA that signed it (TLS is never turned off)"
            )
        else:
            failure = NodeUnreachable(
                f"{node.address} is unreachable ({type(exc).__name__}) while logging in {role} user {username!r}; "
                "check the host and port in the Redis secret and that the server runs"
            )
    if client is not None:
        client.close()
    raise failure


def login_works(node: RedisNode, tls: TlsSettings, username: str, password: str) -> bool:
    """True if ``username`` can log in with ``password`` and run PING; False if the node refuses the login."""
    try:
        client = connect(node, tls, username, password, role="application")
    except LoginRefused:
        return False
    client.close()
    return True


@contextmanager
def _checked(node: RedisNode, username: str, what: str) -> Iterator[None]:
    """Turn a Redis error from an admin command into one that names the node, the user and the fix."""
    try:
        yield
    except redis.exceptions.NoPermissionError:
        raise NotPermitted(
            f"{node.address}: the administrator may not {what} for user {username!r}; grant the admin user "
            "+acl (and +config|get +config|rewrite for persistence) on this node"
        ) from None
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise NodeUnreachable(
            f"{node.address} stopped answering ({type(exc).__name__}) while trying to {what} for user {username!r}"
        ) from None
    except redis.ResponseError as exc:
        # Redis answers a bad ACL rule with the rule itself, which holds a hash: only say which kind of error.
        kind = str(exc).split(" ", 1)[0]
        raise RedisRotationError(f"{node.address}: Redis refused to {what} for user {username!r} ({kind})") from None


def password_hashes(admin: redis.Redis, node: RedisNode, username: str) -> set[str]:
    """The SHA-256 hashes of ``username``'s passwords on the node; :class:`UnknownUser` if there is no such user."""
    with _checked(node, username, "read the ACL user"):
        user = admin.acl_getuser(username)
    if user is None:
        raise UnknownUser(
            f"{node.address} has no ACL user {username!r}; create it first (ACL SETUSER) or fix the username "
            "in the Redis secret"
        )
    return set(user["passwords"])


def add_hash(admin: redis.Redis, node: RedisNode, username: str, password_hash: str) -> bool:
    """Add a password by its hash; returns False if the user already had it."""
    if password_hash in password_hashes(admin, node, username):
        return False
    with _checked(node, username, "add a password"):
        admin.execute_command("ACL", "SETUSER", username, f"#{password_hash}")
    return True


def remove_hash(admin: redis.Redis, node: RedisNode, username: str, password_hash: str) -> bool:
    """Remove a password by its hash; returns False if the user did not have it (Redis would answer an error)."""
    if password_hash not in password_hashes(admin, node, username):
        return False
    with _checked(node, username, "remove a password"):
        admin.execute_command("ACL", "SETUSER", username, f"!{password_hash}")
    return True


def requirepass_is_set(admin: redis.Redis, node: RedisNode) -> bool:
    """Whether the node was configured with ``requirepass`` (its value is a plain password: it is not kept)."""
    with _checked(node, "default", "read requirepass"):
        return bool(admin.config_get("requirepass").get("requirepass"))


def persist(admin: redis.Redis, node: RedisNode, username: str) -> Persistence:
    """Save the users where the node keeps them: its ACL file, else its config file; ``none`` if it has neither."""
    with _checked(node, username, "save the ACL change"):
        if admin.config_get("aclfile").get("aclfile"):
            admin.execute_command("ACL", "SAVE")
            return "aclfile"
        if admin.info("server").get("config_file"):
            admin.config_rewrite()
            return "config"
    return "none"
