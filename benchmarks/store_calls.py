"""Count the store API calls of one rotation per runbook on the AWS store, and of each store operation on every kind.

Part 1, runbooks: the flows in flows/ as they are (approvals off, zero grace) on a real Prefect server, each rotating
an AWS secret (moto_server over HTTP) whose administrator secret sits in the same account, against a PostgreSQL
cluster and a redis-server started here. Secrets Manager calls are counted with a botocore hook and attributed to
the secret, the store operation and the caller (the Prefect task, or the runbook core's own code in the flow). Each
runbook rotates twice, each time with an empty value cache as a new worker process has: from a secret just created,
then from the state the first rotation left.

Part 2, store operations: each operation once on a fresh secret of every kind, counting its API calls (botocore for
AWS, the requests each protocol double answers for the others, none for the local file). "cold" is the first read
of a version in this process; later reads of it are answered from memory.

    .venv/bin/python -m benchmarks.store_calls [--out store_calls.json]

Prints the tables the README shows and writes every count to the JSON file.
"""

from __future__ import annotations

import argparse
import contextvars
import functools
import json
import os
import secrets
import shutil
import tempfile
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from prefect.context import TaskRunContext

import stores.base
import tasks.postgres
from benchmarks.store_operations import _start_stores
from flows.jwt import JwtPolicy, rotate_jwt_signing_key
from flows.postgres import PgPolicy, rotate_postgres_credentials
from flows.redis_password import RedisPolicy, rotate_redis_password
from rotation.options import RotationOptions
from stores import SecretStore, open_store
from targets.jwt.keyset import JwtKeyset, new_key
from tests.doubles import JsonHandler
from tests.fixtures.postgres import create_app, start_cluster, stop_cluster
from tests.fixtures.prefect import running_prefect_server
from tests.fixtures.redis_servers import start_redis_server

OPERATIONS = ("create", "read", "read_version", "describe", "list", "stage", "stage_from_current", "promote")
OPERATIONS += ("revert", "discard", "prune")
_operation: contextvars.ContextVar[str | None] = contextvars.ContextVar("store_operation", default=None)
_CORE = "runbook core (flow)"


class Calls:
    """Every counted API call: (secret, store operation, caller, API operation)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.seen: list[tuple[str, str, str, str]] = []

    def add(self, secret: str, api: str) -> None:
        context = TaskRunContext.get()
        row = (secret, _operation.get() or "-", context.task.name if context else _CORE, api)
        with self._lock:
            self.seen.append(row)

    @contextmanager
    def counting(self) -> Iterator[list[tuple[str, str, str, str]]]:
        """The calls made inside the block."""
        with self._lock:
            start = len(self.seen)
        found: list[tuple[str, str, str, str]] = []
        yield found
        with self._lock:
            found += self.seen[start:]


def _name_operations() -> None:
    """Tag every call with the store operation (the outermost public method) it is made for."""
    for name in OPERATIONS:
        original = getattr(SecretStore, name)

        @functools.wraps(original)
        def tagged(self: SecretStore, *args: Any, __original: Callable = original, __name: str = name, **kw: Any):
            token = _operation.set(_operation.get() or __name)
            try:
                return __original(self, *args, **kw)
            finally:
                _operation.reset(token)

        setattr(SecretStore, name, tagged)


def _count_aws(store: SecretStore, calls: Calls) -> None:
    def before_parameter_build(model: Any, params: dict[str, Any], **_: Any) -> None:
        calls.add(str(params.get("SecretId") or params.get("Name") or "-"), model.name)

    # Once per API call, with its parameters (retries are below it); one client serves every AWS store here.
    store._client.meta.events.register("before-parameter-build.secretsmanager", before_parameter_build)


def _count_doubles(calls: Calls) -> None:
    original = JsonHandler._dispatch

    def dispatch(handler: JsonHandler) -> None:
        calls.add(type(handler.server.double).__name__, f"{handler.command} {handler.path.split('?')[0]}")
        original(handler)

    for method in ("do_GET", "do_POST", "do_PUT", "do_PATCH", "do_DELETE", "do_LIST"):
        setattr(JsonHandler, method, dispatch)


# --- part 1: runbooks -------------------------------------------------------------------------------------------


def bench_runbooks(base: Path, aws: Callable[[str], SecretStore], calls: Calls) -> dict[str, list[dict[str, Any]]]:
    options = RotationOptions(approve_promote=False, journal=str(base / "journal.db"), started_by="benchmark")
    cluster_folder = Path(tempfile.mkdtemp(prefix="store-calls-pg-"))  # its own: handed to the postgres user
    cluster = start_cluster(cluster_folder)
    redis_server = start_redis_server(base)
    try:
        jwt = aws("bench/jwt")
        jwt.create(JwtKeyset(keys=[new_key("HS256", 512)]).to_secret())
        redis_secret, redis_admin = aws("bench/redis"), aws("bench/redis-admin")
        app = {"hosts": [redis_server.node], "username": "app", "password": redis_server.app_password}
        redis_secret.create(json.dumps(app))
        redis_admin.create(json.dumps({"username": "admin", "password": redis_server.admin_password}))
        alternating, single = (create_app(cluster, aws(f"bench/pg-{n}"), aws(f"bench/pg-admin-{n}")) for n in "ab")
        pg, single_user = PgPolicy(grace_seconds=0), PgPolicy(strategy="single-user", grace_seconds=0)
        runbooks: dict[str, tuple[tuple[SecretStore, ...], Callable[..., object]]] = {
            "jwt": (
                (jwt,),
                functools.partial(
                    rotate_jwt_signing_key, jwt.uri.display, policy=JwtPolicy(token_lifetime_seconds=0, grace_seconds=0)
                ),
            ),
            "postgres (alternating users)": (
                (alternating.secret, alternating.admin),
                functools.partial(rotate_postgres_credentials, alternating.uri, policy=pg),
            ),
            "postgres (single user)": (
                (single.secret, single.admin),
                functools.partial(rotate_postgres_credentials, single.uri, policy=single_user),
            ),
            "redis": (
                (redis_secret, redis_admin),
                functools.partial(
                    rotate_redis_password,
                    redis_secret.uri.display,
                    redis_admin.uri.display,
                    policy=RedisPolicy(grace_seconds=0),
                ),
            ),
        }
        results: dict[str, list[dict[str, Any]]] = {}
        for runbook, (involved, run) in runbooks.items():
            names = {store.uri.name: role for store, role in zip(involved, ("secret", "administrator"), strict=False)}
            results[runbook] = []
            for _ in range(2):
                stores.base._values = stores.base._ValueCache()  # each rotation as a new worker process starts it
                tasks.postgres._admins.clear()
                with calls.counting() as seen:
                    run(options=options)
                results[runbook].append(_summary([row for row in seen if row[0] in names], names))
        return results
    finally:
        redis_server.stop()
        stop_cluster(cluster)
        shutil.rmtree(cluster_folder, ignore_errors=True)


def _summary(rows: list[tuple[str, str, str, str]], names: dict[str, str]) -> dict[str, Any]:
    return {
        "total": len(rows),
        "by_secret": dict(Counter(names[secret] for secret, *_ in rows)),
        "by_operation": dict(Counter(f"{names[secret]}: {operation}" for secret, operation, _, _ in rows)),
        "by_caller": dict(Counter(f"{names[secret]}: {caller}" for secret, _, caller, _ in rows)),
        "by_api": dict(Counter(api for *_, api in rows)),
    }


# --- part 2: store operations -----------------------------------------------------------------------------------


def _operation_counts(store: SecretStore, calls: Calls) -> dict[str, int]:
    """Each operation once, in an order that gives each the state it works on; the API calls of each."""
    counts: dict[str, int] = {}

    def measure(label: str, call: Callable[[], Any]) -> Any:
        with calls.counting() as seen:
            result = call()
        counts[label] = len(seen)
        return result

    def value() -> str:
        return secrets.token_urlsafe(24)

    first = measure("create", lambda: store.create(value()))
    for label, read in (("read CURRENT", store.read), ("read_version", lambda: store.read_version(first))):
        stores.base._values = stores.base._ValueCache()  # as in a process that has not read this secret yet
        measure(f"{label} (cold)", read)
        measure(f"{label} (warm)", read)
    measure("describe", store.describe)
    rotation, dropped, last = (str(uuid.uuid4()) for _ in range(3))
    measure("stage", lambda: store.stage(value(), rotation))
    measure("promote", lambda: store.promote(rotation))
    measure("stage_from_current", lambda: store.stage_from_current(dropped, lambda current: value()))
    measure("discard", lambda: store.discard(dropped))
    store.stage(value(), last)
    store.promote(last)
    measure("revert", lambda: store.revert(last, first))
    measure("prune", store.prune)
    return counts


def main(out: Path) -> None:
    base = Path(tempfile.mkdtemp(prefix="store-calls-"))
    saved = dict(os.environ)
    calls = Calls()
    _name_operations()
    _count_doubles(calls)
    try:
        with ExitStack() as stack:
            kinds = _start_stores(stack, base)
            endpoint = kinds["aws"].uri.options["endpoint_url"]

            def aws(name: str) -> SecretStore:
                return open_store(f"aws://{name}?region=us-east-1&endpoint_url={endpoint}")

            _count_aws(kinds["aws"], calls)
            operations = {kind: _operation_counts(store, calls) for kind, store in kinds.items()}
            home = base / "prefect-home"
            home.mkdir()
            with running_prefect_server(home):
                runbooks = bench_runbooks(base, aws, calls)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(base, ignore_errors=True)
    out.write_text(json.dumps({"runbooks": runbooks, "operations": operations}, indent=2) + "\n")
    _print_tables(runbooks, operations)
    print(f"\nall counts: {out}")


def _print_tables(runbooks: dict[str, list[dict[str, Any]]], operations: dict[str, dict[str, int]]) -> None:
    print("\nSecrets Manager API calls of one rotation (first rotation / second rotation):\n")
    print("| runbook | total | rotated secret | administrator secret | of which the runbook core |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for runbook, rotations in runbooks.items():
        cells = [" / ".join(str(r[key].get(part, 0) if part else r[key]) for r in rotations)
                 for key, part in (("total", None), ("by_secret", "secret"), ("by_secret", "administrator"),
                                   ("by_caller", f"secret: {_CORE}"))]  # fmt: skip
        print(f"| {runbook} | " + " | ".join(cells) + " |")
    labels = list(next(iter(operations.values())))
    print("\nAPI calls per store operation:\n")
    print("| store | " + " | ".join(labels) + " |")
    print("| --- |" + " ---: |" * len(labels))
    for kind, counts in operations.items():
        print(f"| {kind} | " + " | ".join(str(counts[label]) for label in labels) + " |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("store_calls.json"), help="where to write the counts")
    main(parser.parse_args().out)
