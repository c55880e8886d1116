"""Measure the single-user failure window: from the password change to the secret's promotion.

Starts its own scram-sha-256 cluster and a local store, then runs N single-user changes back to back with the
runbook's own step (``change_password_and_promote``) while a client re-reads the CURRENT secret and logs in every
~15 ms. Prints the median and p95 window and the failed logins per rotation.

    .venv/bin/python -m benchmarks.postgres_single_user_window [N]
"""

from __future__ import annotations

import json
import secrets
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import psycopg2

from stores import Stage, open_store
from targets.postgres.credential import new_login_value
from tasks.postgres import change_password_and_promote
from tests.fixtures.postgres import start_cluster, stop_cluster


def main(rotations: int = 30) -> None:
    base = Path(tempfile.mkdtemp(prefix="pg-bench-"))
    cluster = start_cluster(base)
    try:
        password = secrets.token_urlsafe(24)
        with cluster.connect() as conn:
            stored = psycopg2.extensions.encrypt_password(password, "bench", conn, "scram-sha-256")
        cluster.query("CREATE ROLE bench LOGIN PASSWORD %s", (stored,))
        store_file = base / "store.db"
        admin = open_store(f"local://{store_file}?secret=admin")
        secret = open_store(f"local://{store_file}?secret=app")
        common = {"engine": "postgres", "host": cluster.host, "port": cluster.port, "sslmode": "disable"}
        admin.create(json.dumps({**common, "username": cluster.superuser, "password": cluster.password}))
        secret.create(json.dumps({**common, "username": "bench", "password": password, "masterarn": "x"}))

        stop, logins, failures = threading.Event(), [0], [0]

        def client() -> None:
            reader = open_store(secret.uri.display)
            while not stop.is_set():
                value = json.loads(reader.read(Stage.CURRENT))
                try:
                    cluster.connect("postgres", value["username"], value["password"]).close()
                except psycopg2.OperationalError:
                    failures[0] += 1
                logins[0] += 1
                time.sleep(0.015)

        thread = threading.Thread(target=client, daemon=True)
        thread.start()
        windows, alters = [], []
        started = time.monotonic()
        for _ in range(rotations):
            rotation_id = str(uuid.uuid4())
            secret.stage(new_login_value(secret.read(Stage.CURRENT), "bench"), rotation_id)
            result = change_password_and_promote.fn(secret.uri.display, rotation_id, admin.uri.display)
            windows.append(float(result["window_ms"]))
            alters.append(float(result["alter_ms"]))
            time.sleep(0.05)  # let the client log in between rotations
        stop.set()
        thread.join(10)
        elapsed = time.monotonic() - started
        windows.sort()
        print(f"single-user rotations: {rotations} in {elapsed:.1f}s")
        print(
            f"window (ALTER ROLE commit -> store promotion), ms: median {statistics.median(windows):.2f}, "
            f"p95 {windows[int(len(windows) * 0.95) - 1]:.2f}, max {windows[-1]:.2f}; of which the ALTER ROLE "
            f"commit: median {statistics.median(alters):.2f}"
        )
        print(
            f"client: {logins[0]} logins every ~15 ms, {failures[0]} failed "
            f"({failures[0] / rotations:.2f} per rotation)"
        )
    finally:
        stop_cluster(cluster)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 30)
