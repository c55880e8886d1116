"""What a rotation costs: Prefect's floor plus the work, and what a fleet of them reaches.

    .venv/bin/python -m benchmarks.rotation_costs [--rounds N] [--fleets 10,100,400] [--out FILE]

Everything runs on this machine against real servers started here: a scram-sha-256 PostgreSQL cluster, a
redis-server, the example auth service, moto_server, and Prefect servers (SQLite, and PostgreSQL in the same
cluster for the fleets). It writes JSON (default benchmarks/results/rotation_costs.json) and prints the README
table.

1. Floor: for each runbook (JWT on a local store with the auth service, PostgreSQL alternating users, Redis), its
   flow run with approvals off and no grace against an empty flow with the same number of task runs, interleaved
   round by round, in-process with heartbeats off (as the rotate command runs them); the fresh secrets and users a
   rotation needs are made before its timing starts. Its work: the same runbook with its steps as plain calls
   (``steps_as_tasks=False``, as a fleet's members run) less an empty flow without tasks, so that a rotation's time
   reads as Prefect's floor plus its work (database, store, HTTP and journal calls) plus what is left beyond both.
   Between runs the harness lets the SQLite server settle for a second, for all alike: a flow run created while the
   server still writes the last one's events is answered 503 and the client backs off 2 s (Prefect's server, not
   this project).
2. Counts per rotation: Secrets Manager API calls (the secret on moto_server; botocore's before-call events) and
   journal transactions (SQLAlchemy commits on the journal's engine).
3. The rotate command's wall time for a JWT rotation: with a Prefect server running (PREFECT_API_URL set) and
   without one (the command's own temporary server).
4. Fleets: ``rotate_fleet`` of the PostgreSQL runbook over 10, 100 and 400 secrets, 8 at a time, in a worker
   subprocess, with the Prefect server on SQLite and on PostgreSQL: rotations per second, failed rotations, the
   worker's peak memory.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import psycopg2.extensions
import redis
import sqlalchemy as sa
from prefect import flow, task
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

from flows.jwt import JwtPolicy, rotate_jwt_signing_key
from flows.postgres import PgPolicy, rotate_postgres_credentials
from flows.redis_password import RedisPolicy, rotate_redis_password
from rotation import RotationOptions
from rotation.journal import Journal
from stores import open_store
from targets.consumers import Consumer, HttpReload
from targets.http import http_client
from targets.jwt.keyset import JwtKeyset, new_key
from tests.fixtures.moto import _wait_until_ready
from tests.fixtures.ports import free_port, wait_for_port
from tests.fixtures.postgres import PgCluster, start_cluster, stop_cluster
from tests.fixtures.prefect import running_prefect_server

ROOT = Path(__file__).resolve().parents[1]
SETTLE_SECONDS = 1.0


@task
def _noop(i: int) -> int:
    return i


@flow(persist_result=False)
def empty_flow(tasks: int) -> None:
    for i in range(tasks):
        _noop(i)


@contextmanager
def _process(argv: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("w") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()


class World:
    """The servers every part uses, and fresh secrets for each rotation."""

    def __init__(self, stack: ExitStack, base: Path) -> None:
        self.base = base
        self.pg: PgCluster = start_cluster(Path(tempfile.mkdtemp(prefix="bench-pg-")))
        stack.callback(stop_cluster, self.pg)
        self.pg.query("CREATE DATABASE bench")
        self.redis_port = free_port()
        self.redis_password, self.admin_password = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
        acl = base / "users.acl"
        acl.write_text(f"user admin on >{self.admin_password} ~* &* +@all\nuser default off\n")
        stack.enter_context(
            _process(
                ["redis-server", "--bind", "127.0.0.1", "--port", str(self.redis_port), "--save", "",
                 "--appendonly", "no", "--dir", str(base), "--aclfile", str(acl)],
                base / "redis.log",
            )
        )  # fmt: skip
        wait_for_port(self.redis_port)
        self.moto_port = free_port()
        os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"})  # moto's dummy pair
        moto = stack.enter_context(
            _process([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(self.moto_port)],
                     base / "moto.log")
        )  # fmt: skip
        _wait_until_ready(moto, f"http://127.0.0.1:{self.moto_port}", base / "moto.log")
        self.service_port = free_port()
        self.jwt_uri = f"local://{base / 'store.db'}?secret=jwt"
        open_store(self.jwt_uri).create(JwtKeyset(keys=[new_key("HS256", 512)]).to_secret())
        stack.enter_context(
            _process(
                [sys.executable, "-m", "examples.auth_service", "--store", self.jwt_uri, "--host", "127.0.0.1",
                 "--port", str(self.service_port)],
                base / "auth.log",
            )
        )  # fmt: skip
        wait_for_port(self.service_port)
        self.count = 0

    def postgres_secret(self, store: str = "local") -> str:
        """A new login user with a table, and its secret (alternating users) in a local or the AWS store."""
        self.count += 1
        user, password = f"bench_{self.count}_{secrets.token_hex(3)}", secrets.token_urlsafe(24)
        with self.pg.connect("bench") as conn:
            verifier = psycopg2.extensions.encrypt_password(password, user, conn, "scram-sha-256")
        self.pg.query(f'CREATE ROLE "{user}" LOGIN PASSWORD %s', (verifier,), dbname="bench")
        self.pg.query(f'CREATE TABLE "{user}_t" (id int)', dbname="bench")
        self.pg.query(f'ALTER TABLE "{user}_t" OWNER TO "{user}"', dbname="bench")
        admin = self._store(store, f"admin-{self.count}")
        common = {
            "engine": "postgres",
            "host": "127.0.0.1",
            "port": self.pg.port,
            "dbname": "bench",
            "sslmode": "disable",
        }
        admin.create(json.dumps({**common, "username": self.pg.superuser, "password": self.pg.password}))
        app = self._store(store, f"app-{self.count}")
        app.create(json.dumps({**common, "username": user, "password": password, "masterarn": admin.uri.display}))
        return app.uri.display

    def redis_secrets(self) -> tuple[str, str]:
        self.count += 1
        user, password = f"app{self.count}", secrets.token_urlsafe(16)
        with redis.Redis(port=self.redis_port, username="admin", password=self.admin_password) as admin:
            admin.execute_command("ACL", "SETUSER", user, "on", f">{password}", "~*", "+@all")
            admin.execute_command("ACL", "SAVE")
        app, admin_secret = self._store("local", f"redis-{self.count}"), self._store("local", f"radmin-{self.count}")
        app.create(json.dumps({"hosts": [f"127.0.0.1:{self.redis_port}"], "username": user, "password": password}))
        admin_secret.create(json.dumps({"username": "admin", "password": self.admin_password}))
        return app.uri.display, admin_secret.uri.display

    def _store(self, kind: str, name: str) -> Any:
        if kind == "aws":
            uri = f"aws://bench/{name}-{secrets.token_hex(3)}?region=us-east-1&endpoint_url=http://127.0.0.1:{self.moto_port}"
        else:
            uri = f"local://{self.base / 'store.db'}?secret={name}"
        return open_store(uri)


def _options(journal: Path, **more: Any) -> RotationOptions:
    return RotationOptions(approve_promote=False, journal=str(journal), started_by="bench", **more)


def _runbooks(world: World, journal: Path, **options: Any) -> dict[str, Callable[[], Callable[[], Any]]]:
    """Per runbook, what makes one rotation ready (fresh secrets and users: not timed) and gives the call to time;
    ``options`` are more :class:`RotationOptions`."""
    consumer = Consumer(name="auth", restart=HttpReload(url=f"http://127.0.0.1:{world.service_port}/reload"),
                        verify_url=f"http://127.0.0.1:{world.service_port}/me")  # fmt: skip

    def jwt() -> Callable[[], Any]:
        policy = JwtPolicy(token_lifetime_seconds=0, grace_seconds=0)
        return partial(rotate_jwt_signing_key, world.jwt_uri, consumers=[consumer], policy=policy,
                       options=_options(journal, **options))  # fmt: skip

    def postgres() -> Callable[[], Any]:
        policy = PgPolicy(grace_seconds=0)
        return partial(rotate_postgres_credentials, world.postgres_secret(), policy=policy,
                       options=_options(journal, **options))  # fmt: skip

    def redis_password() -> Callable[[], Any]:
        secret, admin = world.redis_secrets()
        policy = RedisPolicy(grace_seconds=0)
        return partial(rotate_redis_password, secret, admin, policy=policy, options=_options(journal, **options))

    return {"jwt": jwt, "postgres": postgres, "redis": redis_password}


def _task_runs(server_api: str, flow_run_id: str) -> int:
    query = {"flow_runs": {"id": {"any_": [flow_run_id]}}}
    return len(http_client().post(f"{server_api}/task_runs/filter", json=query, timeout=10).json())


def part_floor(world: World, api: str, rounds: int) -> dict[str, Any]:
    from prefect import get_client

    results: dict[str, Any] = {}
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        runbooks = _runbooks(world, world.base / "floor.db")
        plain = _runbooks(world, world.base / "floor.db", steps_as_tasks=False)
        sizes: dict[str, int] = {}
        for name, ready in runbooks.items():  # warm-up, and how many task runs each makes
            ready()()
            time.sleep(SETTLE_SECONDS)
            with get_client(sync_client=True) as client:
                latest = client.read_flow_runs(limit=1, sort="START_TIME_DESC")[0]
            sizes[name] = _task_runs(api, str(latest.id))
            plain[name]()()
        empty_flow(1)
        times: dict[str, list[float]] = {"empty-0": []}
        for _ in range(rounds):
            for name, ready in runbooks.items():
                calls = {f"empty-{name}": partial(empty_flow, sizes[name]), name: ready(),
                         "empty-0": partial(empty_flow, 0), f"plain-{name}": plain[name]()}  # fmt: skip
                for label, call in calls.items():
                    time.sleep(SETTLE_SECONDS)
                    started = time.perf_counter()
                    call()
                    times.setdefault(label, []).append(time.perf_counter() - started)
    bare = statistics.median(times["empty-0"])
    for name in runbooks:
        runbook, empty = statistics.median(times[name]), statistics.median(times[f"empty-{name}"])
        work = statistics.median(times[f"plain-{name}"]) - bare
        results[name] = {"task_runs": sizes[name], "median_s": round(runbook, 3), "empty_median_s": round(empty, 3),
                         "ratio": round(runbook / empty, 2), "work_s": round(work, 3),
                         "beyond_floor_and_work_s": round(runbook - empty - work, 3)}  # fmt: skip
    results["empty flow without tasks"] = {"median_s": round(bare, 3)}
    return results


def part_counts(world: World) -> dict[str, Any]:
    calls: list[str] = []
    journal_path = world.base / "counts.db"
    commits: list[int] = []
    engine = Journal(journal_path)._engine
    sa.event.listen(engine, "commit", lambda _conn: commits.append(1))
    counts: dict[str, Any] = {}
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        for _ in range(2):  # the second rotation of a secret is the steady state
            secret = world.postgres_secret("aws")
            # Every AWS store of one endpoint shares one client: its events see every call.
            open_store(secret)._client.meta.events.register(
                "before-call.secrets-manager", lambda **kw: calls.append(kw["event_name"]), unique_id="bench-calls"
            )
            calls.clear()
            commits.clear()
            rotate_postgres_credentials(secret, policy=PgPolicy(grace_seconds=0), options=_options(journal_path))
        counts["postgres (aws store)"] = {"store_calls": len(calls), "journal_transactions": len(commits)}
        for name, ready in _runbooks(world, journal_path).items():
            call = ready()
            commits.clear()
            call()
            counts.setdefault(name, {})["journal_transactions"] = len(commits)
    return counts


def part_cli(world: World, api: str, rounds: int) -> dict[str, Any]:
    rotate = str(Path(sys.executable).parent / "rotate")
    argv = [rotate, "jwt", world.jwt_uri, "--no-approval", "--token-lifetime", "0", "--grace", "0",
            "--reload-url", f"http://127.0.0.1:{world.service_port}/reload",
            "--journal", str(world.base / "cli.db")]  # fmt: skip
    times: dict[str, list[float]] = {"with a running server": [], "temporary server": []}
    with_server = {**os.environ, "PREFECT_API_URL": api}
    without = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | {"PREFECT_HOME": str(world.base / "ph")}
    for _ in range(rounds):
        for label, env in (("with a running server", with_server), ("temporary server", without)):
            started = time.perf_counter()
            done = subprocess.run(argv, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
            times[label].append(time.perf_counter() - started)
            if done.returncode:
                raise RuntimeError(f"rotate failed: {done.stdout[-500:]} {done.stderr[-1500:]}")
    return {label: round(statistics.median(values), 2) for label, values in times.items()}


FLEET = """
import json, sys, time, resource
from flows.fleet import rotate_fleet
from flows.postgres import PgPolicy
from rotation import RotationOptions
secrets, journal = json.loads(sys.argv[1]), sys.argv[2]
options = RotationOptions(approve_promote=False, journal=journal, started_by="bench")
started = time.perf_counter()
result = rotate_fleet("postgres-credentials", secrets, {"policy": PgPolicy(grace_seconds=0)}, options, 8)
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "succeeded": len(result["succeeded"]), "failed": len(result["failed"]),
                  "errors": list(result["failed"].values())[:3],
                  "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def part_fleets(world: World, sizes: list[int]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for backend in ("sqlite", "postgresql"):
        home = Path(tempfile.mkdtemp(prefix=f"bench-prefect-{backend}-"))
        database = None
        if backend == "postgresql":
            name = f"prefect_{secrets.token_hex(3)}"
            world.pg.query(f'CREATE DATABASE "{name}"')
            database = f"postgresql+asyncpg://{world.pg.superuser}:{world.pg.password}@127.0.0.1:{world.pg.port}/{name}"
        with running_prefect_server(home, database) as server:
            for size in sizes:
                fleet = [world.postgres_secret() for _ in range(size)]
                env = {**os.environ, "PREFECT_API_URL": server.api_url}
                done = subprocess.run(
                    [sys.executable, "-c", FLEET, json.dumps(fleet), str(world.base / f"fleet-{backend}-{size}.db")],
                    env=env, capture_output=True, text=True, cwd=ROOT,
                )  # fmt: skip
                if done.returncode:
                    raise RuntimeError(f"the fleet failed: {done.stderr[-2000:]}")
                measured = json.loads(done.stdout.strip().splitlines()[-1])
                measured["rotations_per_s"] = round(measured["succeeded"] / measured["seconds"], 2)
                results[f"{backend} {size}"] = measured
        shutil.rmtree(home, ignore_errors=True)
    for backend in ("sqlite", "postgresql"):
        small, large = results.get(f"{backend} 100"), results.get(f"{backend} 400")
        if small and large:
            results[f"{backend} 400/100 cost"] = round(large["seconds"] / small["seconds"], 2)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--fleets", default="10,100,400")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "rotation_costs.json")
    args = parser.parse_args()
    os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
    with ExitStack() as stack:
        base = Path(tempfile.mkdtemp(prefix="bench-costs-"))
        stack.callback(shutil.rmtree, base, ignore_errors=True)
        world = World(stack, base)
        report: dict[str, Any] = {}
        with running_prefect_server(Path(tempfile.mkdtemp(prefix="bench-prefect-"))) as server:
            report["floor"] = part_floor(world, server.api_url, args.rounds)
            report["counts"] = part_counts(world)
            report["cli_seconds"] = part_cli(world, server.api_url, max(3, args.rounds // 2))
        report["fleets"] = part_fleets(world, [int(s) for s in args.fleets.split(",")])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
