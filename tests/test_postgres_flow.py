"""The PostgreSQL credentials runbook end to end: a Prefect server, the local store, a scram-sha-256 cluster."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg2
import pytest

from flows.postgres import PgPolicy, rotate_postgres_credentials
from rotation.context import RotationOptions, RotationRolledBack
from rotation.journal import Journal
from stores import Stage, open_store
from targets.postgres.credential import parse_credential
from targets.postgres.login import LoginRefused, TlsFailed, patient_connection
from tests.fixtures.postgres import PgApp, PgCluster
from tests.fixtures.prefect import PrefectServer, drain_prefect_workers
from tests.tls import write_test_pki


@pytest.fixture
def options(tmp_path: Path) -> RotationOptions:
    return RotationOptions(approve_promote=False, journal=str(tmp_path / "journal.db"), started_by="test")


def rotate(app: PgApp, options: RotationOptions, **policy: object) -> dict:
    policy.setdefault("grace_seconds", 0)
    return rotate_postgres_credentials(app.uri, policy=PgPolicy(**policy), options=options)


def owner_of(app: PgApp, table: str) -> str:
    return app.cluster.query("SELECT tableowner FROM pg_tables WHERE tablename = %s", (table,), dbname=app.dbname)[0][0]


def test_alternating_users_take_turns_and_share_objects(
    prefect_server: PrefectServer, pg_app: Callable[..., PgApp], options: RotationOptions
) -> None:
    app = pg_app()
    first = rotate(app, options)
    current = app.current()
    assert first["state"] == "completed" and current["username"] == f"{app.user}_clone"
    assert current["masterarn"] == app.admin_uri and current["engine"] == "postgres"  # AWS's shape is kept
    assert app.can_login(current["username"], current["password"])
    assert app.can_login(app.user, app.password), "the previous user stays valid until the next rotation"
    owner = f"{app.user}_owner"
    assert owner_of(app, "orders") == owner  # adopted: the original user became the owner role

    # A table created while the clone is current is owned by the owner role...
    conn = app.cluster.connect(app.dbname, current["username"], current["password"])
    with conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE made_by_clone (v int)")
        cur.execute("INSERT INTO made_by_clone VALUES (1)")
    conn.close()
    assert owner_of(app, "made_by_clone") == owner

    rotate(app, options)  # ...so after the next rotation the original user reads and writes it
    current = app.current()
    assert current["username"] == app.user and app.can_login(app.user, current["password"])
    conn = app.cluster.connect(app.dbname, app.user, current["password"])
    with conn, conn.cursor() as cur:
        cur.execute("INSERT INTO made_by_clone VALUES (2)")
        cur.execute("ALTER TABLE made_by_clone ADD COLUMN w int")  # even owner-only statements work
        cur.execute("SELECT count(*) FROM made_by_clone")
        assert cur.fetchone()[0] == 2
        cur.execute("SELECT rolcreatedb FROM pg_roles WHERE rolname = %s", (f"{app.user}_clone",))
        assert cur.fetchone()[0] is True, "CREATEDB was carried over to the clone"
    conn.close()
    assert not app.can_login(app.user, app.password)

    # No password was ever sent in plain text: the server logged every statement, only SCRAM verifiers.
    log = app.cluster.log_file.read_text()
    assert current["password"] not in log and app.password not in log and "SCRAM-SHA-256$" in log


def test_single_user_changes_the_password_and_promotes_at_once(
    prefect_server: PrefectServer, pg_app: Callable[..., PgApp], options: RotationOptions
) -> None:
    app = pg_app()
    old_session = app.cluster.connect(app.dbname, app.user, app.password)
    summary = rotate(app, options, strategy="single-user", retire="disable")
    current = app.current()
    assert summary["state"] == "completed" and current["username"] == app.user
    assert 0 < summary["window_ms"] < 1000
    assert app.can_login(app.user, current["password"]) and not app.can_login(app.user, app.password)
    assert json.loads(app.secret.read(Stage.PREVIOUS))["password"] == app.password
    # the session opened with the old password was ended
    with pytest.raises(psycopg2.OperationalError), old_session.cursor() as cur:
        cur.execute("SELECT 1")
    old_session.close()


@pytest.mark.parametrize("mode", ["disable", "drop"])
def test_retire_disables_or_drops_the_previous_user(
    prefect_server: PrefectServer, pg_app: Callable[..., PgApp], options: RotationOptions, mode: str
) -> None:
    app = pg_app()
    rotate(app, options)
    clone = app.current()
    session = app.cluster.connect(app.dbname, clone["username"], clone["password"])
    rotate(app, options, retire=mode)  # the original user is current again; the clone is retired
    roles = {name: login for name, login, _ in app.roles()}
    assert (clone["username"] in roles) is (mode == "disable") and roles.get(clone["username"]) in (False, None)
    assert not app.can_login(clone["username"], clone["password"])
    with pytest.raises(psycopg2.OperationalError), session.cursor() as cur:  # its session was ended
        cur.execute("SELECT 1")
    session.close()
    rotate(app, options)  # the retired user comes back with a new password and its privileges
    current = app.current()
    assert current["username"] == clone["username"] and app.can_login(clone["username"], current["password"])


def test_a_failed_privilege_check_rolls_back_with_the_old_login_working(
    prefect_server: PrefectServer, pg_app: Callable[..., PgApp], options: RotationOptions
) -> None:
    app = pg_app()
    app.cluster.query("CREATE TABLE payroll (v int)", dbname=app.dbname)  # owned by the admin, not granted
    before, roles = app.secret.describe(), app.roles()
    with pytest.raises(RotationRolledBack, match=r"privilege check.*payroll") as failure:
        rotate(app, options, privilege_checks=["orders", "public.payroll"])
    assert app.password not in str(failure.value)
    after = app.secret.describe()
    assert after.version_at(Stage.CURRENT) == before.version_at(Stage.CURRENT)
    assert after.version_at(Stage.PENDING) is None
    assert app.roles() == roles, "the clone was dropped and the adoption undone"
    assert owner_of(app, "orders") == app.user
    assert app.can_login(app.user, app.password)


def test_a_failed_privilege_check_in_single_user_mode_puts_the_password_back(
    prefect_server: PrefectServer, pg_app: Callable[..., PgApp], options: RotationOptions
) -> None:
    app = pg_app()
    with pytest.raises(RotationRolledBack, match="no_such_table"):
        rotate(app, options, strategy="single-user", privilege_checks=["no_such_table"])
    assert app.current()["password"] == app.password and app.can_login(app.user, app.password)
    assert app.secret.describe().version_at(Stage.PENDING) is None


def test_a_password_changed_by_hand_is_repaired(
    prefect_server: PrefectServer, pg_app: Callable[..., PgApp], options: RotationOptions
) -> None:
    app = pg_app()
    app.cluster.query(f'ALTER ROLE "{app.user}" PASSWORD %s', ("changed-by-hand",))
    assert not app.can_login(app.user, app.password)
    summary = rotate(app, options)
    assert summary["repaired"] is True and summary["state"] == "completed"
    current = app.current()
    assert app.can_login(current["username"], current["password"])
    assert app.can_login(app.user, app.password), "the PREVIOUS credential works again too"


def test_tls_verify_full_is_honoured_and_never_downgraded(
    prefect_server: PrefectServer,
    pg_app: Callable[..., PgApp],
    pg_cluster: PgCluster,
    options: RotationOptions,
    tmp_path: Path,
) -> None:
    good = pg_app(sslmode="verify-full", sslrootcert=str(pg_cluster.ca_file))
    rotate(good, options)
    assert good.current()["sslmode"] == "verify-full"
    assert good.can_login(good.current()["username"], good.current()["password"])

    ca, _, _ = write_test_pki(tmp_path / "other-ca", "another")  # a CA that did not sign the server's certificate
    bad = pg_app(sslmode="verify-full", sslrootcert=str(ca))
    before, roles = bad.secret.describe(), bad.roles()
    with pytest.raises(TlsFailed, match=r"sslmode=verify-full.*never falls back to plain text"):
        rotate(bad, options)
    assert bad.secret.describe() == before and bad.roles() == roles


def test_reconnecting_client_sees_no_failed_login_through_ten_rotations(
    record_property,
    prefect_server: PrefectServer,
    pg_app: Callable[..., PgApp],
    options: RotationOptions,
    tmp_path: Path,
) -> None:
    """A client reads the CURRENT secret and logs in anew about every 15 ms, through 10 alternating rotations."""
    app = pg_app()
    stop = threading.Event()
    logins, failures, users = [0], [], set()

    def client() -> None:
        store = open_store(app.uri)
        while not stop.is_set():
            value = json.loads(store.read(Stage.CURRENT))
            users.add(value["username"])
            try:
                conn = app.cluster.connect(app.dbname, value["username"], value["password"])
                with conn.cursor() as cur:
                    cur.execute("SELECT count(*) FROM orders")
                conn.close()
            except psycopg2.Error as exc:
                failures.append(type(exc).__name__)
            logins[0] += 1
            time.sleep(0.015)

    passwords = [app.password]
    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    started = time.monotonic()
    try:
        for _ in range(10):
            rotate(app, options, grace_seconds=0.1)
            passwords.append(app.current()["password"])
    finally:
        stop.set()
        thread.join(timeout=10)
    elapsed = time.monotonic() - started
    record_property("logins", logins[0])
    record_property("failed_logins", len(failures))
    record_property("seconds", round(elapsed, 1))
    assert failures == [] and logins[0] > 100
    assert users == {app.user, f"{app.user}_clone"}

    # Canary: no password reached the Prefect database, logs or storage, the journal, or the server's log.
    drain_prefect_workers()
    prefect_server.database_file()  # its database, dumped into its home when it is PostgreSQL
    assert passwords[0].startswith("canary-")
    found = []
    for root in (prefect_server.home, tmp_path / "journal.db", app.cluster.log_file):
        for path in [root] if root.is_file() else root.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                found += [f"{path}" for p in passwords if p.encode() in data]
    assert found == []


def test_sessions_of_the_previous_user_are_reported_or_hold_back_its_retirement(
    prefect_server: PrefectServer, pg_app: Callable[..., PgApp], options: RotationOptions
) -> None:
    app = pg_app()
    held = app.cluster.connect(app.dbname, app.user, app.password)  # a consumer that never reconnects
    summary = rotate(app, options)  # the default: reported; it began before the adoption renamed its role
    facts = Journal(options.journal).steps(summary["rotation_id"])["consumers-reconnected"].facts
    assert facts == {app.user: 1, f"{app.user}_clone": 0}
    held.close()
    clone = app.current()
    held = app.cluster.connect(app.dbname, clone["username"], clone["password"])
    with pytest.raises(RotationRolledBack, match=rf"1 session\(s\) of '{clone['username']}' still open.*after 0.5 s"):
        rotate(app, options, reconnect_check="require", reconnect_timeout_seconds=0.5, retire="disable")
    assert app.current() == clone and app.can_login(clone["username"], clone["password"])
    held.close()
    summary = rotate(app, options, reconnect_check="require", retire="disable")
    assert summary["state"] == "completed" and not app.can_login(clone["username"], clone["password"])


def test_a_new_password_that_arrives_late_is_waited_for(pg_app: Callable[..., PgApp]) -> None:
    """Propagation lag: the password reaches the server 1 s after verification starts."""
    app = pg_app()
    credential = parse_credential(json.dumps(app.current()), "test")
    late = "canary-late-" + uuid.uuid4().hex
    with app.cluster.connect() as conn:
        stored = psycopg2.extensions.encrypt_password(late, app.user, conn, "scram-sha-256")
    timer = threading.Timer(1.0, app.cluster.query, (f'ALTER ROLE "{app.user}" PASSWORD %s', (stored,)))
    timer.start()
    try:
        with (
            pytest.raises(LoginRefused),
            patient_connection(credential, app.user, late, "application", attempts=1, first_delay=0.1),
        ):
            pass
        started = time.monotonic()
        with patient_connection(credential, app.user, late, "application", attempts=8, first_delay=0.1) as conn:
            assert conn.closed == 0
        assert 0.3 < time.monotonic() - started < 10
    finally:
        timer.join()
