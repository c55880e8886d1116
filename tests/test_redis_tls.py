"""Redis over TLS: the certificate is verified against the CA named in the secret, and TLS is never dropped."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from stores import SecretStore
from targets.redis.credential import new_password_value
from targets.redis.nodes import NodeUnreachable, TlsVerificationFailed
from tasks.redis_acl import add_password, inspect_redis_secret, logins_accepted, logins_refused, remove_old_password
from tests.fixtures.redis_servers import RedisServer

TlsFiles = Callable[[str], tuple[Path, Path, Path]]


def sha(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


@pytest.fixture
def tls_server(redis_servers: Callable[..., RedisServer], redis_tls_files: TlsFiles) -> RedisServer:
    return redis_servers(tls=redis_tls_files("server"))


def _stores(
    factory: Callable[[], SecretStore], server: RedisServer, **fields: object
) -> tuple[SecretStore, SecretStore, str]:
    secret, admin = factory(), factory()
    value = {"host": "127.0.0.1", "port": server.port, "username": "app", "password": server.app_password, **fields}
    old_version = secret.create(json.dumps(value))
    admin.create(json.dumps({"username": "admin", "password": server.admin_password}))
    return secret, admin, old_version


def test_rotation_over_verified_tls(tls_server: RedisServer, local_store_factory: Callable[[], SecretStore]) -> None:
    secret, admin, old_version = _stores(
        local_store_factory, tls_server, tls=True, ssl_ca_certs=str(tls_server.ca_file)
    )
    uri, admin_uri = secret.uri.display, admin.uri.display
    assert inspect_redis_secret.fn(uri, admin_uri).nodes == [f"rediss://{tls_server.node}"]
    rotation_id = str(uuid.uuid4())
    secret.stage(new_password_value(secret.read()), rotation_id)
    new = json.loads(secret.read_version(rotation_id))["password"]
    add_password.fn(uri, rotation_id, admin_uri)
    logins_accepted.fn(uri, rotation_id)
    secret.promote(rotation_id)
    remove_old_password.fn(uri, rotation_id, old_version, admin_uri)
    logins_refused.fn(uri, old_version)
    assert tls_server.password_hashes() == {sha(new)}


def test_certificate_from_another_ca_is_refused(
    tls_server: RedisServer, local_store_factory: Callable[[], SecretStore], redis_tls_files: TlsFiles
) -> None:
    other_ca = redis_tls_files("other")[0]
    secret, admin, _ = _stores(local_store_factory, tls_server, tls=True, ssl_ca_certs=str(other_ca))
    with pytest.raises(TlsVerificationFailed, match=rf"rediss://{tls_server.node}: .*did not verify"):
        inspect_redis_secret.fn(secret.uri.display, admin.uri.display)
    assert tls_server.password_hashes() == {sha(tls_server.app_password)}


def test_tls_is_not_dropped(tls_server: RedisServer, local_store_factory: Callable[[], SecretStore]) -> None:
    # A rediss:// node in a secret that says tls=false still gets (verified) TLS.
    ca = str(tls_server.ca_file)
    hosts = [f"rediss://{tls_server.node}"]
    secret, admin, _ = _stores(local_store_factory, tls_server, host=None, hosts=hosts, tls=False, ssl_ca_certs=ca)
    plan = inspect_redis_secret.fn(secret.uri.display, admin.uri.display)
    assert plan.nodes == [f"rediss://{tls_server.node}"]
    # A plain-text secret against a TLS-only server fails; it does not find some other way in.
    plain, plain_admin, _ = _stores(local_store_factory, tls_server)
    with pytest.raises(NodeUnreachable, match=rf"redis://{tls_server.node}"):
        inspect_redis_secret.fn(plain.uri.display, plain_admin.uri.display)
