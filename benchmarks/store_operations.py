"""Measure the store operations of a rotation on every store kind, and the runbook core's own overhead.

Part 1, stores: a local store (a temp file), aws (a moto_server over HTTP), and the protocol doubles for vault, k8s,
gcp and azure (started in this process as the tests start them). For N repetitions, interleaved round-robin so that
machine noise hits every kind alike, it times: read CURRENT, one rotation's store calls (stage + promote), and
revert. Each kind keeps one store object (its client is built once), so the times are the calls themselves.
Prints the median and p95 of each, and the median's ratio to the local store.

Part 2, the runbook core: a real Prefect server (its own PREFECT_HOME, a free port) and a minimal flow,
``with rotation(...) as r: r.stage(...); r.promote()`` on the local store, interleaved with the same two steps
called directly (``stage_secret.fn`` and ``promote_secret.fn``). Prints the median per-rotation time of the flow
call, of the rotation block inside the flow, and of the direct calls, with their ratios.

    .venv/bin/python -m benchmarks.store_operations [N]
"""

from __future__ import annotations

import math
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from urllib.parse import urlencode

from prefect import flow

from rotation import RotationOptions, rotation, runbook
from stores import SecretStore, Stage, open_store
from tasks.secrets import promote_secret, stage_secret
from tests.doubles.azure_keyvault_double import AzureKeyVaultDouble
from tests.doubles.gcp_secret_manager_double import GcpSecretManagerDouble
from tests.doubles.kubernetes_double import KubernetesDouble
from tests.doubles.vault_double import VaultDouble
from tests.fixtures.azure_store import AzureTarget
from tests.fixtures.gcp_store import GcpTarget
from tests.fixtures.kubernetes_api import _kubeconfig_for
from tests.fixtures.moto import _wait_until_ready
from tests.fixtures.ports import free_port
from tests.fixtures.prefect import running_prefect_server

OPERATIONS = ("read CURRENT", "stage+promote", "revert")


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[math.ceil(0.95 * len(ordered)) - 1]


@contextmanager
def _process(command: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """A server subprocess, stopped (by its own pid) when the block ends."""
    with log.open("w") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        yield server
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _start_stores(stack: ExitStack, base: Path) -> dict[str, SecretStore]:
    """One fresh store per kind, each pointed at its server the way the test fixtures point them."""
    name = f"bench-{uuid.uuid4().hex[:8]}"
    stores: dict[str, SecretStore] = {"local": open_store(f"local://{base / 'store.db'}?secret={name}")}

    moto_port = free_port()
    moto_log = base / "moto_server.log"
    moto_command = [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(moto_port)]
    moto = stack.enter_context(_process(moto_command, moto_log))
    endpoint = f"http://127.0.0.1:{moto_port}"
    _wait_until_ready(moto, endpoint, moto_log)
    os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"})
    for variable in ("AWS_SESSION_TOKEN", "AWS_PROFILE"):  # never reach a real account from a benchmark
        os.environ.pop(variable, None)
    stores["aws"] = open_store(f"aws://bench/{name}?{urlencode({'region': 'us-east-1', 'endpoint_url': endpoint})}")

    vault = VaultDouble().start()
    stack.callback(vault.stop)
    os.environ.update({"VAULT_ADDR": vault.url, "VAULT_TOKEN": vault.root_token})
    stores["vault"] = open_store(f"vault://secret/bench/{name}")

    kube = KubernetesDouble(namespaces=("default",)).start()
    stack.callback(kube.stop)
    _kubeconfig_for(kube, base / "kubeconfig")
    os.environ["KUBECONFIG"] = str(base / "kubeconfig")
    os.environ.pop("KUBERNETES_SERVICE_HOST", None)
    stores["k8s"] = open_store(f"k8s://default/{name}")

    gcp = GcpSecretManagerDouble()
    gcp.start()
    stack.callback(gcp.stop)
    stores["gcp"] = GcpTarget(project="bench", endpoint=gcp.url, double=gcp).store(name)

    azure = AzureKeyVaultDouble().start()
    stack.callback(azure.stop)
    stores["azure"] = AzureTarget(vault_url=azure.url, double=azure).store(name)
    return stores


def _one_round(store: SecretStore) -> tuple[float, float, float]:
    """Read CURRENT, stage + promote a new value, revert it; seconds for each."""
    previous = store.describe().version_at(Stage.PREVIOUS)
    rotation_id = str(uuid.uuid4())
    value = secrets.token_urlsafe(24)
    t0 = time.perf_counter()
    store.read(Stage.CURRENT)
    t1 = time.perf_counter()
    store.stage(value, rotation_id)
    store.promote(rotation_id)
    t2 = time.perf_counter()
    store.revert(rotation_id, previous)
    t3 = time.perf_counter()
    return t1 - t0, t2 - t1, t3 - t2


def bench_stores(base: Path, repetitions: int) -> None:
    with ExitStack() as stack:
        stores = _start_stores(stack, base)
        for store in stores.values():
            store.create(secrets.token_urlsafe(24))
            _one_round(store)  # warm-up: connections, first-use imports, key file
        times: dict[str, list[tuple[float, float, float]]] = {kind: [] for kind in stores}
        kinds = list(stores)
        for repetition in range(repetitions):
            # Rotate the order too, so no kind always runs right after the same neighbour.
            for kind in kinds[repetition % len(kinds) :] + kinds[: repetition % len(kinds)]:
                times[kind].append(_one_round(stores[kind]))
    medians = {k: [statistics.median(t[i] for t in v) for i in range(3)] for k, v in times.items()}
    print(f"\nStore operations: {repetitions} repetitions per kind, interleaved; ms (x = median / local median)")
    print(f"{'store':<7}" + "".join(f"{op + ' med':>20}{'p95':>9}{'x':>7}" for op in OPERATIONS))
    for kind, series in times.items():
        cells = ""
        for i in range(3):
            column = [t[i] for t in series]
            ratio = medians[kind][i] / medians["local"][i]
            cells += f"{medians[kind][i] * 1000:>20.2f}{_p95(column) * 1000:>9.2f}{ratio:>7.1f}"
        print(f"{kind:<7}{cells}")


def _new_value(current: str) -> str:
    return secrets.token_urlsafe(24)


@runbook("benchmark")
@flow(persist_result=False)
def bench_rotation(secret: str, options: RotationOptions) -> float:
    """The smallest runbook: stage and promote under rotation(); returns the seconds spent in its block."""
    started = time.perf_counter()
    with rotation(secret, options) as r:
        r.stage("stage", _new_value)
        r.promote("promote")
    return time.perf_counter() - started


def _direct(secret: str) -> None:
    """The same two steps without Prefect, lock, journal or audit."""
    rotation_id = str(uuid.uuid4())
    stage_secret.fn(secret, rotation_id, _new_value)
    promote_secret.fn(secret, rotation_id)


def bench_core(base: Path, repetitions: int) -> None:
    home = base / "prefect-home"
    home.mkdir()
    with running_prefect_server(home):
        flow_secret = open_store(f"local://{base / 'core.db'}?secret=flow")
        direct_secret = open_store(f"local://{base / 'core.db'}?secret=direct")
        for store in (flow_secret, direct_secret):
            store.create(secrets.token_urlsafe(24))
        options = RotationOptions(approve_promote=False, journal=str(base / "journal.db"))
        bench_rotation(flow_secret.uri.display, options)  # warm-up: first flow run, client, imports
        _direct(direct_secret.uri.display)
        flow_calls, blocks, directs = [], [], []
        for _ in range(repetitions):
            t0 = time.perf_counter()
            blocks.append(bench_rotation(flow_secret.uri.display, options))
            flow_calls.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            _direct(direct_secret.uri.display)
            directs.append(time.perf_counter() - t0)
    direct_median = statistics.median(directs)
    print(f"\nRunbook core on the local store, real Prefect server: {repetitions} rotations each, interleaved")
    print(f"{'stage + promote':<44}{'median ms':>10}{'p95 ms':>10}{'x direct':>10}")
    for label, series in (
        ("flow call (rotation() in a @flow)", flow_calls),
        ("rotation block inside the flow", blocks),
        ("direct (stage_secret.fn, promote_secret.fn)", directs),
    ):
        median = statistics.median(series)
        print(f"{label:<44}{median * 1000:>10.1f}{_p95(series) * 1000:>10.1f}{median / direct_median:>10.1f}")


def main(repetitions: int = 30) -> None:
    base = Path(tempfile.mkdtemp(prefix="store-bench-"))
    saved = dict(os.environ)
    try:
        bench_stores(base, repetitions)
        bench_core(base, repetitions)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 30)
