"""This runbook against AWS's rotation scheme, on the same moto_server and scram-sha-256 PostgreSQL, in one run.

Four ways to rotate, interleaved rotation by rotation: the runbook's single-user and alternating-users strategies
(a flow run each, on a Prefect server started here, heartbeats off as the ``rotate`` command runs them), and AWS's
single-user and multi-user schemes (``tests/aws_rotation.py``: the four steps createSecret, setSecret, testSecret,
finishSecret called back to back, as written from AWS's documentation). A client reads AWSCURRENT with its own
boto3 client and logs in every ~15 ms to the database being rotated. Per way: the median failure window (single
user: from the password change to the label move; alternating: none, both logins stay valid), failed logins per
rotation, the wall time of the rotation's work (AWS: the four steps; the runbook: its flow run) and, for the runbook,
an empty flow with as many task runs measured in the same rounds (Prefect's floor), and the Secrets Manager calls
per rotation (counted with a botocore hook, the consumer's own calls left out; every rotation starts with empty
caches, as a new worker process would).

    .venv/bin/python -m benchmarks.postgres_vs_aws [ROUNDS] [--out benchmarks/results/postgres_vs_aws.json]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import boto3
import psycopg2
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

import stores.base
import tasks.postgres
from benchmarks.rotation_costs import _task_runs, empty_flow
from flows.postgres import PgPolicy, rotate_postgres_credentials
from rotation.options import RotationOptions
from stores import open_store
from tests.aws_rotation import AwsApp, AwsStyleRotation, make_aws_app
from tests.fixtures.moto import running_moto_server
from tests.fixtures.postgres import start_cluster, stop_cluster
from tests.fixtures.prefect import running_prefect_server

WAYS = ("runbook single-user", "runbook alternating-users", "AWS single-user", "AWS multi-user")


class Client:
    """Reads AWSCURRENT of the active app and logs in with it every ~15 ms."""

    def __init__(self, endpoint: str) -> None:
        self.sm = boto3.client("secretsmanager", region_name="us-east-1", endpoint_url=endpoint)
        self.app: AwsApp | None = None
        self.logins = self.failures = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            app = self.app
            if app is not None:
                value = json.loads(
                    self.sm.get_secret_value(SecretId=app.name, VersionStage="AWSCURRENT")["SecretString"]
                )
                try:
                    app.cluster.connect(app.dbname, value["username"], value["password"]).close()
                except psycopg2.OperationalError:
                    self.failures += 1
                self.logins += 1
            time.sleep(0.015)


class Counter:
    """Secrets Manager calls made through the clients it is attached to."""

    def __init__(self) -> None:
        self.calls = 0
        self.by_api: collections.Counter[str] = collections.Counter()

    def attach(self, client: Any) -> None:
        client.meta.events.register("before-parameter-build.secretsmanager", self._count)

    def _count(self, model: Any, **_: Any) -> None:
        self.calls += 1
        self.by_api[model.name] += 1


def _fresh_process() -> None:
    stores.base._values = stores.base._ValueCache()  # as a new worker process starts
    tasks.postgres._admins.clear()


def main(rounds: int, out: Path) -> None:
    base = Path(tempfile.mkdtemp(prefix="pg-vs-aws-"))
    cluster = start_cluster(Path(tempfile.mkdtemp(prefix="pg-vs-aws-pg-")))
    try:
        with ExitStack() as stack:
            endpoint = stack.enter_context(running_moto_server(base / "moto.log"))
            home = base / "prefect-home"
            home.mkdir()
            stack.enter_context(running_prefect_server(home))
            stack.enter_context(temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}))
            results = _run(rounds, base, cluster, endpoint)
    finally:
        stop_cluster(cluster)
        shutil.rmtree(base, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    _print(results)
    print(f"\nall numbers: {out}")


def _run(rounds: int, base: Path, cluster: Any, endpoint: str) -> dict[str, Any]:
    os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"})
    counter = Counter()
    apps = {way: make_aws_app(cluster, endpoint, masterarn=True) for way in WAYS}
    counter.attach(open_store(apps[WAYS[0]].uri)._client)  # the client every aws:// store of this process shares
    options = RotationOptions(approve_promote=False, journal=str(base / "journal.db"), started_by="benchmark")

    def runbook(app: AwsApp, strategy: str) -> Callable[[], dict[str, Any]]:
        policy = PgPolicy(strategy=strategy, grace_seconds=0, reconnect_check="off")
        return lambda: rotate_postgres_credentials(app.uri, policy=policy, options=options)

    def aws(app: AwsApp, multi_user: bool) -> Callable[[], dict[str, Any]]:
        scheme = AwsStyleRotation(app.client, app.name, multi_user)
        counter.attach(app.client)

        def rotate() -> dict[str, Any]:
            token = str(uuid.uuid4())
            scheme.create(token)
            scheme.set(token)
            changed = time.perf_counter()
            scheme.test(token)
            scheme.finish(token)
            return {"window_ms": 0.0 if multi_user else (time.perf_counter() - changed) * 1000}

        return rotate

    rotate = {
        WAYS[0]: runbook(apps[WAYS[0]], "single-user"),
        WAYS[1]: runbook(apps[WAYS[1]], "alternating-users"),
        WAYS[2]: aws(apps[WAYS[2]], False),
        WAYS[3]: aws(apps[WAYS[3]], True),
    }
    task_runs: dict[str, int] = {}
    for way in WAYS:  # warm-up: the first rotation adopts AWS's layout or creates the clone; then a steady one
        rotate[way]()
        rotate[way]()
        if way in WAYS[:2]:
            task_runs[way] = _task_runs(os.environ["PREFECT_API_URL"], _latest_flow_run())
    empty_flow(1)
    client = Client(endpoint)
    empties = ("empty flow (single-user)", "empty flow (alternating-users)")
    rows: dict[str, list[dict[str, float]]] = {way: [] for way in (*WAYS, *empties)}
    api_calls: dict[str, list[dict[str, int]]] = {way: [] for way in WAYS}
    try:
        for _ in range(rounds):
            for way in WAYS:
                app = apps[way]
                client.app = app
                time.sleep(0.1)
                failures, logins, calls, by_api = client.failures, client.logins, counter.calls, counter.by_api.copy()
                _fresh_process()
                started = time.perf_counter()
                summary = rotate[way]()
                wall = time.perf_counter() - started
                calls = counter.calls - calls
                api_calls[way].append(dict(counter.by_api - by_api))
                time.sleep(0.1)  # logins with what the rotation left
                rows[way].append({"window_ms": float(summary.get("window_ms", 0.0)), "wall_s": wall,
                                  "failed_logins": client.failures - failures, "logins": client.logins - logins,
                                  "store_calls": calls})  # fmt: skip
                client.app = None
                if way in WAYS[:2]:
                    strategy = way.removeprefix("runbook ")
                    started = time.perf_counter()
                    empty_flow(task_runs[way])
                    rows[f"empty flow ({strategy})"].append({"wall_s": time.perf_counter() - started})
    finally:
        client.stop.set()
        client.thread.join(5)
    return {"rounds": rounds, "task_runs": task_runs, "medians": _medians(rows), "rows": rows, "api_calls": api_calls}


def _latest_flow_run() -> str:
    from prefect import get_client

    time.sleep(1.0)
    with get_client(sync_client=True) as client:
        return str(client.read_flow_runs(limit=1, sort="START_TIME_DESC")[0].id)


def _medians(rows: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, float]]:
    return {
        way: {key: round(statistics.median(r[key] for r in runs), 3) for key in runs[0]}
        for way, runs in rows.items()
        if runs
    }


def _print(results: dict[str, Any]) -> None:
    medians = results["medians"]
    print(f"\n{results['rounds']} rotations per way, medians:\n")
    print("| way | failure window (ms) | failed logins / rotation | wall time (s) | store calls / rotation |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for way in WAYS:
        m = medians[way]
        mean_failed = statistics.mean(r["failed_logins"] for r in results["rows"][way])
        print(f"| {way} | {m['window_ms']:.1f} | {mean_failed:.2f} | {m['wall_s']:.3f} | {m['store_calls']:.0f} |")
    for way in WAYS:
        print(f"{way}: Secrets Manager calls of the last rotation: {results['api_calls'][way][-1]}")
    for strategy in ("single-user", "alternating-users"):
        flow, empty = medians[f"runbook {strategy}"]["wall_s"], medians[f"empty flow ({strategy})"]["wall_s"]
        print(f"runbook {strategy}: flow run {flow:.3f} s, empty flow with as many tasks {empty:.3f} s, "
              f"ratio {flow / empty:.2f}")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rounds", nargs="?", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/postgres_vs_aws.json"))
    arguments = parser.parse_args()
    main(arguments.rounds, arguments.out)
