"""What a Redis secret holds: the nodes, the ACL user and its password, and how to reach the nodes over TLS.

The secret's value is JSON, compatible with AWS's ElastiCache secrets and extended for several nodes::

    {"host": "cache-1", "port": 6379, "username": "app", "password": "...",
     "hosts": ["cache-2:6379", "rediss://cache-3:6380"],
     "tls": true, "ssl_ca_certs": "/etc/ssl/redis-ca.pem", "ssl_certfile": null, "ssl_keyfile": null}

``tls: true`` or a ``rediss://`` node turns TLS on for that node; TLS always verifies the server's certificate
(against ``ssl_ca_certs`` or the system CAs) and is never downgraded to plain text. The administrator secret has
the same shape; only its ``username`` and ``password`` are used.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from errors import BadInput
from redaction import register_secret
from targets.secret_json import parse_json_credential

_NODE = re.compile(r"^(?:(?P<scheme>rediss?)://)?(?P<host>\[[^\]]+\]|[^:/\[\]]+)(?::(?P<port>\d+))?/?$")


class RedisSecretInvalid(BadInput, ValueError):
    """The secret's value is not a Redis credential this runbook understands."""


class RedisNode(BaseModel):
    """One Redis server: a primary, a replica, or one of several independent servers."""

    model_config = ConfigDict(frozen=True)

    host: str
    port: int = Field(default=6379, ge=1, le=65535)
    tls: bool = False

    @property
    def address(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str, tls: bool, default_port: int) -> RedisNode:
        match = _NODE.match(text.strip())
        if not match:
            raise RedisSecretInvalid(f"node {text!r} is not host, host:port, redis://host:port or rediss://host:port")
        port = int(match["port"]) if match["port"] else default_port
        # tls=true in the secret wins over a redis:// node: a secret never downgrades TLS.
        return cls(host=match["host"].strip("[]"), port=port, tls=tls or match["scheme"] == "rediss")


class TlsSettings(BaseModel):
    """Where the CA (and an optional client certificate) for TLS connections are."""

    model_config = ConfigDict(frozen=True)

    ssl_ca_certs: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None


class RedisCredential(BaseModel):
    """The secret's value. ``password`` is a ``SecretStr`` so that no repr or error shows it."""

    model_config = ConfigDict(extra="allow", frozen=True)

    host: str | None = None
    port: int = Field(default=6379, ge=1, le=65535)
    hosts: list[str] = []
    username: str = Field(default="default", min_length=1)
    password: SecretStr
    tls: bool = False
    ssl_ca_certs: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    @property
    def secret(self) -> str:
        return self.password.get_secret_value()

    @property
    def password_hash(self) -> str:
        """The form Redis keeps (``ACL SETUSER u #hash``), so changes can be sent without the plain password."""
        return register_secret(hashlib.sha256(self.secret.encode()).hexdigest())

    @property
    def tls_settings(self) -> TlsSettings:
        return TlsSettings(ssl_ca_certs=self.ssl_ca_certs, ssl_certfile=self.ssl_certfile, ssl_keyfile=self.ssl_keyfile)

    def nodes(self) -> list[RedisNode]:
        """Every node named by ``host`` and ``hosts``, in order, without duplicates."""
        names = ([self.host] if self.host else []) + self.hosts
        nodes = list(dict.fromkeys(RedisNode.parse(n, self.tls, self.port) for n in names))
        if not nodes:
            raise RedisSecretInvalid("it names no Redis node: set host (and port), or hosts")
        return nodes

    def with_password(self, password: str) -> str:
        """This credential as JSON with another password (the staged value of a rotation)."""
        data = self.model_dump(mode="json")
        data["password"] = register_secret(password)
        return json.dumps(data)


def parse_credential(text: str, where: str, needs_nodes: bool = True) -> RedisCredential:
    """Parse a secret's value; errors name ``where`` and the fields at fault, never the value."""
    credential = parse_json_credential(
        text,
        where,
        RedisCredential,
        RedisSecretInvalid,
        "a Redis credential",
        '"username" and "password" (and "host"/"hosts" for the Redis secret)',
    )
    if needs_nodes:
        try:
            credential.nodes()
        except RedisSecretInvalid as exc:
            raise RedisSecretInvalid(f"{where}: {exc}") from None
    return credential


def new_password_value(current: str, length_bytes: int = 32) -> str:
    """The current credential with a new random password (given to ``Rotation.stage``)."""
    credential = parse_credential(current, "the current Redis secret")
    return credential.with_password(secrets.token_urlsafe(length_bytes))
