"""The Redis password steps against real redis-server processes (called as plain functions, without a flow)."""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from stores import SecretStore
from targets.redis.credential import RedisSecretInvalid, new_password_value
from targets.redis.nodes import LoginRefused, NodeUnreachable, NotPermitted, UnknownUser
from tasks.redis_acl import (
    add_password,
    inspect_redis_secret,
    logins_accepted,
    logins_refused,
    remove_added_password,
    remove_old_password,
)
from tests.fixtures.ports import free_port
from tests.fixtures.redis_servers import RedisServer


def sha(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


@dataclass
class Deployment:
    servers: list[RedisServer]
    secret: SecretStore
    admin: SecretStore
    old_version: str

    @property
    def uri(self) -> str:
        return self.secret.uri.display

    @property
    def admin_uri(self) -> str:
        return self.admin.uri.display

    def stage_new(self) -> tuple[str, str]:
        """Stage a new password as a rotation would; returns (rotation id, new password)."""
        rotation_id = str(uuid.uuid4())
        value = new_password_value(self.secret.read())
        self.secret.stage(value, rotation_id)
        return rotation_id, json.loads(value)["password"]


@pytest.fixture
def deployment(
    redis_servers: Callable[..., RedisServer], local_store_factory: Callable[[], SecretStore]
) -> Callable[..., Deployment]:
    def make(
        count: int = 1, extra_hosts: tuple[str, ...] = (), admin_rules: tuple[str, ...] = (), **kwargs
    ) -> Deployment:
        app_password, admin_password = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        servers = [
            redis_servers(
                app_password=app_password,
                admin_password=admin_password,
                admin_rules=admin_rules[i] if i < len(admin_rules) else "+@all",
                **kwargs,
            )
            for i in range(count)
        ]
        secret, admin = local_store_factory(), local_store_factory()
        hosts = [s.node for s in servers] + list(extra_hosts)
        username = servers[0].app_user
        old_version = secret.create(json.dumps({"hosts": hosts, "username": username, "password": app_password}))
        admin.create(json.dumps({"username": "admin", "password": admin_password}))
        return Deployment(servers, secret, admin, old_version)

    return make


def test_rotation_on_three_nodes_adds_then_retires_by_hash(deployment: Callable[..., Deployment]) -> None:
    d = deployment(3)
    old = d.servers[0].app_password
    plan = inspect_redis_secret.fn(d.uri, d.admin_uri)
    assert plan.username == "app" and plan.current_version == d.old_version and len(plan.nodes) == 3

    rotation_id, new = d.stage_new()
    changes = add_password.fn(d.uri, rotation_id, d.admin_uri)
    assert [(c.changed, c.persisted) for c in changes] == [(True, "aclfile")] * 3
    for server in d.servers:  # both passwords work during the overlap
        assert server.password_hashes() == {sha(old), sha(new)}
        assert server.can_login(old) and server.can_login(new)
    assert len(logins_accepted.fn(d.uri, rotation_id)) == 3

    d.secret.promote(rotation_id)
    changes = remove_old_password.fn(d.uri, rotation_id, d.old_version, d.admin_uri)
    assert all(c.changed for c in changes)
    assert len(logins_refused.fn(d.uri, d.old_version)) == 3
    for server in d.servers:
        assert server.password_hashes() == {sha(new)}
        assert not server.can_login(old) and server.can_login(new)
    # Retiring again (a resumed run) changes nothing and does not fail.
    assert not any(c.changed for c in remove_old_password.fn(d.uri, rotation_id, d.old_version, d.admin_uri))


@pytest.mark.parametrize(
    ("persistence", "app_user", "requirepass"),
    [("aclfile", "app", False), ("config", "app", False), ("config", "default", True)],
    ids=["aclfile", "config-file", "requirepass-default-user"],
)
def test_changes_survive_a_restart(
    deployment: Callable[..., Deployment],
    caplog: pytest.LogCaptureFixture,
    persistence: str,
    app_user: str,
    requirepass: bool,
) -> None:
    d = deployment(1, persistence=persistence, app_user=app_user, requirepass=requirepass)
    server, old = d.servers[0], d.servers[0].app_password
    rotation_id, new = d.stage_new()
    assert add_password.fn(d.uri, rotation_id, d.admin_uri)[0].persisted == persistence
    server.restart()
    assert server.can_login(old) and server.can_login(new)

    d.secret.promote(rotation_id)
    with caplog.at_level(logging.WARNING):
        remove_old_password.fn(d.uri, rotation_id, d.old_version, d.admin_uri)
    server.restart()
    assert server.password_hashes() == {sha(new)}
    assert not server.can_login(old) and server.can_login(new)
    saved = "".join(p.read_text() for p in server.directory.iterdir() if p.suffix in (".acl", ".conf"))
    assert new not in saved, "the new password is saved as a hash only"
    # A requirepass line keeps the retired (now refused) password; the operator is told to replace it.
    assert (old in saved) == requirepass == ("requirepass setting still holds the retired password" in caplog.text)


def test_server_without_aclfile_or_config_warns(
    deployment: Callable[..., Deployment], caplog: pytest.LogCaptureFixture
) -> None:
    d = deployment(1, persistence="none")
    rotation_id, _ = d.stage_new()
    with caplog.at_level(logging.WARNING):
        changes = add_password.fn(d.uri, rotation_id, d.admin_uri)
    assert changes[0].persisted == "none"
    assert f"127.0.0.1:{d.servers[0].port}" in caplog.text and "restart of that server would lose it" in caplog.text


def test_failure_on_third_node_rolls_back_the_first_two(deployment: Callable[..., Deployment]) -> None:
    d = deployment(3, admin_rules=("+@all", "+@all", "+@all -acl|setuser"))
    old = d.servers[0].app_password
    rotation_id, new = d.stage_new()
    with pytest.raises(NotPermitted) as failure:
        add_password.fn(d.uri, rotation_id, d.admin_uri)
    message = str(failure.value)
    assert f"127.0.0.1:{d.servers[2].port}" in message and "'app'" in message
    assert "removed again from" in message and f"127.0.0.1:{d.servers[1].port}" in message
    for server in d.servers:
        assert server.password_hashes() == {sha(old)}
        assert not server.can_login(new)
    server = d.servers[0]
    server.restart()  # the removal was saved too
    assert server.password_hashes() == {sha(old)}


def test_undo_removes_the_added_password_everywhere_and_is_idempotent(deployment: Callable[..., Deployment]) -> None:
    d = deployment(2)
    old = d.servers[0].app_password
    assert remove_added_password.fn(d.uri, str(uuid.uuid4()), d.admin_uri) == []  # nothing staged: nothing to do
    rotation_id, _ = d.stage_new()
    add_password.fn(d.uri, rotation_id, d.admin_uri)
    assert all(c.changed for c in remove_added_password.fn(d.uri, rotation_id, d.admin_uri))
    assert not any(c.changed for c in remove_added_password.fn(d.uri, rotation_id, d.admin_uri))
    for server in d.servers:
        assert server.password_hashes() == {sha(old)}


def test_undo_refuses_to_remove_a_current_password(deployment: Callable[..., Deployment]) -> None:
    d = deployment(1)
    rotation_id, new = d.stage_new()
    add_password.fn(d.uri, rotation_id, d.admin_uri)
    d.secret.promote(rotation_id)
    with pytest.raises(Exception, match="is CURRENT"):
        remove_added_password.fn(d.uri, rotation_id, d.admin_uri)
    assert d.servers[0].can_login(new)


def _nothing_changed(d: Deployment) -> None:
    for server in d.servers:
        assert server.password_hashes() == {sha(server.app_password)}


def test_unknown_user_names_node_and_user(deployment: Callable[..., Deployment]) -> None:
    d = deployment(2)
    value = json.loads(d.secret.read())
    d.secret.stage(json.dumps({**value, "username": "ghost"}), rotation_id := str(uuid.uuid4()))
    with pytest.raises(UnknownUser, match=rf"127\.0\.0\.1:{d.servers[0].port} has no ACL user 'ghost'"):
        add_password.fn(d.uri, rotation_id, d.admin_uri)
    _nothing_changed(d)
    with d.servers[0].admin() as admin:
        assert admin.acl_getuser("ghost") is None, "ACL SETUSER must not have created the user"


def test_wrong_admin_password_names_node_and_admin(
    deployment: Callable[..., Deployment], local_store_factory: Callable[[], SecretStore]
) -> None:
    d = deployment(2)
    wrong_admin = local_store_factory()
    wrong_admin.create(json.dumps({"username": "admin", "password": "not-the-admin-password"}))
    rotation_id, _ = d.stage_new()
    with pytest.raises(LoginRefused, match=rf"127\.0\.0\.1:{d.servers[0].port} refused the login of administrator"):
        add_password.fn(d.uri, rotation_id, wrong_admin.uri.display)
    _nothing_changed(d)


def test_unreachable_node_names_it_and_changes_nothing(deployment: Callable[..., Deployment]) -> None:
    dead = f"127.0.0.1:{free_port()}"
    d = deployment(1, extra_hosts=(dead,))
    rotation_id, _ = d.stage_new()
    with pytest.raises(NodeUnreachable, match=rf"redis://{dead} is unreachable"):
        add_password.fn(d.uri, rotation_id, d.admin_uri)
    _nothing_changed(d)
    with pytest.raises(NodeUnreachable, match=dead):
        inspect_redis_secret.fn(d.uri, d.admin_uri)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("this is not json", "is not JSON"),
        (json.dumps({"host": "127.0.0.1", "username": "app"}), "password: Field required"),
        (json.dumps({"username": "app", "password": "canary-in-a-bad-secret"}), "names no Redis node"),
        (json.dumps({"host": "127.0.0.1", "port": 99999, "password": "canary-in-a-bad-secret"}), "port"),
        (json.dumps({"hosts": ["ftp://x"], "password": "canary-in-a-bad-secret"}), "is not host"),
    ],
)
def test_malformed_secret_is_refused_without_its_value(
    local_store_factory: Callable[[], SecretStore], value: str, expected: str
) -> None:
    store, admin = local_store_factory(), local_store_factory()
    store.create(value)
    admin.create(json.dumps({"username": "admin", "password": "x" * 12}))
    with pytest.raises(RedisSecretInvalid) as failure:
        inspect_redis_secret.fn(store.uri.display, admin.uri.display)
    assert expected in str(failure.value) and store.uri.display in str(failure.value)
    assert "canary" not in str(failure.value)


def test_tls_node_is_never_downgraded() -> None:
    from targets.redis.credential import RedisNode, parse_credential

    secret = parse_credential(json.dumps({"hosts": ["redis://a:1", "b"], "tls": True, "password": "p" * 8}), "s")
    assert [n.address for n in secret.nodes()] == ["rediss://a:1", "rediss://b:6379"]
    assert RedisNode.parse("rediss://c:7000", tls=False, default_port=6379).tls
