"""The Redis password runbook end to end: a Prefect server, the local store and real redis-server processes."""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from flows.redis_password import RedisPolicy, rotate_redis_password
from rotation.context import RotationOptions, RotationRolledBack
from stores import SecretStore, Stage, open_store
from targets.consumers import CommandRestart, Consumer
from targets.redis.nodes import UnknownUser
from tests.fixtures.prefect import PrefectServer, drain_prefect_workers
from tests.fixtures.redis_servers import RedisServer


def sha(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


@dataclass
class Setup:
    servers: list[RedisServer]
    secret: SecretStore
    admin: SecretStore
    options: RotationOptions
    journal: Path

    @property
    def uri(self) -> str:
        return self.secret.uri.display

    def rotate(self, **kwargs: object) -> dict:
        kwargs.setdefault("policy", RedisPolicy(grace_seconds=0))
        return rotate_redis_password(self.uri, self.secret_admin_uri, options=self.options, **kwargs)

    @property
    def secret_admin_uri(self) -> str:
        return self.admin.uri.display

    def password(self, stage: Stage = Stage.CURRENT) -> str:
        return json.loads(self.secret.read(stage))["password"]


@pytest.fixture
def setup(
    prefect_server: PrefectServer,
    redis_servers: Callable[..., RedisServer],
    local_store_factory: Callable[[], SecretStore],
    tmp_path: Path,
) -> Callable[..., Setup]:
    def make(count: int = 1, username: str | None = None, admin_rules: tuple[str, ...] = ()) -> Setup:
        app_password, admin_password = "canary-" + secrets.token_urlsafe(20), secrets.token_urlsafe(20)
        servers = [
            redis_servers(
                app_password=app_password,
                admin_password=admin_password,
                admin_rules=admin_rules[i] if i < len(admin_rules) else "+@all",
            )
            for i in range(count)
        ]
        secret, admin = local_store_factory(), local_store_factory()
        value = {"hosts": [s.node for s in servers], "username": username or "app", "password": app_password}
        secret.create(json.dumps(value))
        admin.create(json.dumps({"username": "admin", "password": admin_password}))
        journal = tmp_path / "journal.db"
        options = RotationOptions(approve_promote=False, journal=str(journal), started_by="test")
        return Setup(servers, secret, admin, options, journal)

    return make


@pytest.mark.parametrize("count", [1, 3])
def test_full_rotation(setup: Callable[..., Setup], count: int) -> None:
    s = setup(count)
    old = s.password()
    summary = s.rotate()
    new = s.password()
    assert summary["state"] == "completed" and new != old
    assert summary["persisted"] == {f"redis://{server.node}": "aclfile" for server in s.servers}
    assert s.password(Stage.PREVIOUS) == old
    for server in s.servers:
        assert server.password_hashes() == {sha(new)}
        assert server.can_login(new) and not server.can_login(old)
        server.restart()  # saved in the ACL file
        assert server.can_login(new) and not server.can_login(old)


def test_failure_on_third_node_rolls_back(setup: Callable[..., Setup]) -> None:
    s = setup(3, admin_rules=("+@all", "+@all", "+@all -acl|setuser"))
    old = s.password()
    with pytest.raises(RotationRolledBack, match=rf"127\.0\.0\.1:{s.servers[2].port}.*'app'") as failure:
        s.rotate()
    assert f"removed again from redis://{s.servers[0].node}, redis://{s.servers[1].node}" in str(failure.value)
    assert s.password() == old
    assert s.secret.describe().version_at(Stage.PENDING) is None
    for server in s.servers:
        assert server.password_hashes() == {sha(old)}
    assert old not in str(failure.value)


def test_failure_after_promotion_puts_the_old_password_back(setup: Callable[..., Setup], tmp_path: Path) -> None:
    s = setup(2)
    old = s.password()
    restarts = tmp_path / "restarts"
    restarts.touch()
    # The consumer does not come back with the new password (its 3 restart attempts fail): the rotation must revert
    # the secret, remove the new password from every node, and restart the consumer again (which then works).
    flaky = f'n=$(wc -l < {restarts}); echo restart >> {restarts}; [ "$n" -ge 3 ]'
    failing = Consumer(name="cache-client", restart=CommandRestart(command=["sh", "-c", flaky], timeout_seconds=10))
    with pytest.raises(RotationRolledBack, match="cache-client") as failure:
        s.rotate(consumers=[failing])
    assert old not in str(failure.value)
    assert s.password() == old and s.secret.describe().version_at(Stage.PENDING) is None
    for server in s.servers:
        assert server.password_hashes() == {sha(old)}
        assert server.can_login(old)
    assert len(restarts.read_text().splitlines()) == 4  # 3 attempts in the rotation, then the rollback's restart


def test_unknown_user_is_refused_before_any_change(setup: Callable[..., Setup]) -> None:
    s = setup(2, username="ghost")
    with pytest.raises(UnknownUser, match=r"has no ACL user 'ghost'"):
        s.rotate()
    assert [v.version_id for v in s.secret.describe().versions] == [s.secret.describe().version_at(Stage.CURRENT)]
    for server in s.servers:
        with server.admin() as admin:
            assert admin.acl_getuser("ghost") is None


def _scan(paths: list[Path], needles: list[str]) -> list[str]:
    found = []
    for root in paths:
        for path in [root] if root.is_file() else root.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                found += [f"{path}: {n[:10]}..." for n in needles if n.encode() in data]
    return found


def test_reconnecting_client_sees_no_failed_login_through_ten_rotations(
    setup: Callable[..., Setup], prefect_server: PrefectServer, record_property
) -> None:
    """A client reads the CURRENT secret and logs in anew about every 15 ms, round-robin over three nodes."""
    s = setup(3)
    stop = threading.Event()
    calls, failures, seen = [0], [], set()

    def client() -> None:
        store = open_store(s.uri)
        while not stop.is_set():
            value = json.loads(store.read(Stage.CURRENT))
            seen.add(sha(value["password"]))
            host, _, port = value["hosts"][calls[0] % 3].partition(":")
            try:
                with redis.Redis(
                    host=host,
                    port=int(port),
                    username=value["username"],
                    password=value["password"],
                    retry=Retry(NoBackoff(), 0),
                    socket_timeout=5,
                ) as conn:
                    conn.ping()
            except redis.RedisError as exc:
                failures.append(type(exc).__name__)
            calls[0] += 1
            time.sleep(0.015)

    passwords = [s.password()]
    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    started = time.monotonic()
    try:
        for _ in range(10):
            s.rotate(policy=RedisPolicy(grace_seconds=0.2))
            passwords.append(s.password())
    finally:
        stop.set()
        thread.join(timeout=10)
    elapsed = time.monotonic() - started
    record_property("logins", calls[0])
    record_property("failed_logins", len(failures))
    record_property("seconds", round(elapsed, 1))
    assert failures == [] and calls[0] > 100
    assert len(seen) == 11, "the client saw every password of the ten rotations"

    # No password, old or new, reached the Prefect server's database, its logs, its storage or the journal.
    drain_prefect_workers()
    prefect_server.database_file()  # its database, dumped into its home when it is PostgreSQL
    assert passwords[0].startswith("canary-")
    assert _scan([prefect_server.home, s.journal.parent], passwords) == []
