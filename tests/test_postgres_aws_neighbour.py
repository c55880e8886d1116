"""The runbook beside AWS's rotation scheme on moto_server and a scram-sha-256 cluster: it takes over a secret and
users as AWS's functions leave them, and leaves them as AWS's functions expect for their next rotation."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import psycopg2
import pytest

from flows.postgres import PgPolicy, rotate_postgres_credentials
from rotation.context import RotationOptions
from tests.aws_rotation import AwsApp, AwsStyleRotation, make_aws_app
from tests.fixtures.postgres import PgCluster
from tests.fixtures.prefect import PrefectServer


@pytest.fixture
def options(tmp_path: Path) -> RotationOptions:
    return RotationOptions(approve_promote=False, journal=str(tmp_path / "journal.db"), started_by="test")


@pytest.fixture
def reconnecting(request: pytest.FixtureRequest) -> Iterator[Any]:
    """``start(app)``: a client that reads AWSCURRENT and logs in anew every ~15 ms until the test ends."""
    stop, threads = threading.Event(), []

    def start(app: AwsApp) -> None:
        def client() -> None:
            while not stop.is_set():
                value = app.value()
                try:
                    app.run("SELECT count(*) FROM orders", value)
                except psycopg2.Error as exc:
                    app.failures.append(f"{value['username']}: {type(exc).__name__}")
                app.logins[0] += 1
                time.sleep(0.015)

        thread = threading.Thread(target=client, daemon=True)
        thread.start()
        threads.append(thread)

    yield start
    stop.set()
    for thread in threads:
        thread.join(timeout=10)


def _holder(app: AwsApp, label: str) -> str:
    return next(v for v, held in app.labels().items() if label in held)


def _stop(app: AwsApp, started: float) -> None:
    time.sleep(0.1)  # the client logs in with what the last rotation left
    assert app.logins[0] > 50, f"only {app.logins[0]} logins in {time.monotonic() - started:.1f} s"


def _check_aws_shape(app: AwsApp, username: str) -> None:
    value = app.value()
    assert value["username"] == username
    assert value["port"] == str(app.cluster.port) and value["engine"] == "aurora-postgresql"
    assert value["masterarn"] == app.admin_arn and value["ssl"] is False and value["app_setting"] == {"pool": 5}


@pytest.mark.parametrize("state", ["clone-current", "base-current"])
def test_takes_over_aws_multi_user_layout_and_hands_it_back(
    prefect_server: PrefectServer,
    pg_cluster: PgCluster,
    moto_server: str,
    options: RotationOptions,
    reconnecting: Any,
    state: str,
) -> None:
    app = make_aws_app(pg_cluster, moto_server, masterarn=True)
    aws = AwsStyleRotation(app.client, app.name, multi_user=True)
    clone = f"{app.user}_clone"
    aws.rotate()  # AWS's first rotation creates the clone, a member of the user, and makes it current
    app.run("CREATE TABLE made_by_clone (v int); INSERT INTO made_by_clone VALUES (1)")
    if state == "base-current":
        aws.rotate()
    with pytest.raises(psycopg2.errors.InsufficientPrivilege):  # AWS's layout: the clone's table is its own
        app.run(
            "INSERT INTO made_by_clone VALUES (2)", app.value() if state == "base-current" else app.value("AWSPREVIOUS")
        )
    before, before_id = app.value(), _holder(app, "AWSCURRENT")
    started = time.monotonic()
    reconnecting(app)

    summary = rotate_postgres_credentials(app.uri, policy=PgPolicy(grace_seconds=0), options=options)
    assert summary["state"] == "completed"
    expected = clone if before["username"] == app.user else app.user
    _check_aws_shape(app, expected)
    assert _holder(app, "AWSCURRENT") == summary["rotation_id"] and _holder(app, "AWSPREVIOUS") == before_id
    assert app.value("AWSPREVIOUS") == before

    # Ownership repair: the clone's table is usable by both users, and what either creates is shared.
    for value in (app.value(), app.value("AWSPREVIOUS")):
        app.run(f"INSERT INTO made_by_clone VALUES (3); CREATE TABLE t_{value['username']} (v int)", value)
    for value in (app.value(), app.value("AWSPREVIOUS")):
        app.run(
            f"ALTER TABLE made_by_clone ADD COLUMN IF NOT EXISTS w int; SELECT * FROM t_{app.user}, t_{clone}", value
        )
    assert pg_cluster.query("SELECT rolcreatedb FROM pg_roles WHERE rolname = %s", (clone,)) == [(True,)]

    aws.rotate()  # AWS's function keeps rotating what the runbook left
    _check_aws_shape(app, before["username"])
    app.run("INSERT INTO made_by_clone VALUES (4)")
    summary = rotate_postgres_credentials(app.uri, policy=PgPolicy(grace_seconds=0), options=options)
    assert summary["state"] == "completed"
    _check_aws_shape(app, expected)
    _stop(app, started)
    assert app.failures == []


def test_takes_over_an_aws_single_user_secret(
    prefect_server: PrefectServer,
    pg_cluster: PgCluster,
    moto_server: str,
    options: RotationOptions,
) -> None:
    app = make_aws_app(pg_cluster, moto_server, masterarn=False)
    aws = AwsStyleRotation(app.client, app.name, multi_user=False)
    aws.rotate()
    before = app.value()
    admin = f"aws://{app.admin_arn}?{urlencode({'region': 'us-east-1', 'endpoint_url': moto_server})}"
    summary = rotate_postgres_credentials(
        app.uri, admin_secret=admin, policy=PgPolicy(strategy="single-user", grace_seconds=0), options=options
    )
    assert summary["state"] == "completed"
    value = app.value()
    assert value["username"] == app.user and value["password"] != before["password"]
    assert value["port"] == str(pg_cluster.port) and "masterarn" not in value and value["app_setting"] == {"pool": 5}
    assert app.value("AWSPREVIOUS") == before
    app.run("SELECT count(*) FROM orders")
    aws.rotate()  # AWS's single-user function logs in with the current credential the runbook left
    assert app.value("AWSPREVIOUS") == value
    app.run("SELECT count(*) FROM orders")
