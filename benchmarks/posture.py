"""Measure the posture report over 1,000 secrets in two environments (two local stores of 500 each).

Each store holds a mix of the project's shapes: JWT keysets (HS256, 512 bits), PostgreSQL, Redis and SMTP
credentials (32 random bytes), opaque tokens, and SAML keysets (EC P-256, self-signed); one secret in ten holds the
same password in both stores. A rotation journal holds a completed rotation of one secret in five, a Prefect server
(started for the run, SQLite) holds one deployment per fifty secrets, and each store was backed up (OpenPGP, the
real backup flow) into a destination of its own and drilled. Then the report runs RUNS times (default 5) as a flow
run on that server; the median and the spread of the whole run are reported, and, once, each step called as a plain
function (``.fn``), to show what is the work and what is Prefect's floor.

    .venv/bin/python -m benchmarks.posture [RUNS] [SECRETS]      # writes benchmarks/results/posture.json
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import gnupg

RESULTS = Path(__file__).parent / "results" / "posture.json"


def _keys(home: Path) -> str:
    gpg = gnupg.GPG(gnupghome=str(home))
    spec = gpg.gen_key_input(
        key_type="EDDSA",
        key_curve="ed25519",
        subkey_type="ECDH",
        subkey_curve="cv25519",
        name_email="bench@example.org",
        expire_date="1d",
        no_protection=True,
    )
    return gpg.gen_key(spec).fingerprint


def _value(i: int, shared: str | None) -> str:
    from targets.jwt.keyset import JwtKeyset, new_key
    from targets.saml.certificates import CertificateProfile
    from targets.saml.keyset import SamlKeyset, new_pair

    password = shared or secrets.token_urlsafe(32)
    kind = i % 6
    if kind == 0:
        return JwtKeyset(keys=(new_key("HS256", 512),)).to_secret()
    if kind == 1:
        return json.dumps({"engine": "postgres", "host": "db", "username": f"u{i}", "password": password})
    if kind == 2:
        return json.dumps({"host": "cache", "port": 6379, "username": f"u{i}", "password": password})
    if kind == 3:
        return json.dumps({"host": "smtp", "port": 587, "tls": "starttls", "username": f"u{i}", "password": password})
    if kind == 4:
        return secrets.token_urlsafe(48)
    profile = CertificateProfile(subject=f"CN=sp{i}.example.com", key_type="ec")
    return SamlKeyset((new_pair(profile),)).to_secret()


def _world(base: Path, count: int, fingerprint: str, home: Path) -> tuple[list[str], list[str], str]:
    from prefect import get_client
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.client.schemas.schedules import CronSchedule

    from flows.backup import backup_secrets
    from flows.drill import restore_drill
    from rotation.journal import Journal, Lease, RotationState
    from stores import open_store

    journal = Journal(base / "journal.db")
    half = count // 2
    shared = {i: secrets.token_urlsafe(32) for i in range(0, half, 10)}
    stores, destinations, named = [], [], []
    for env in ("production", "staging"):
        path = base / f"{env}.db"
        for i in range(half):
            uri = open_store(f"local://{path}?secret={env}/{i:04d}").uri.display
            open_store(uri).create(_value(i if i not in shared else 1, shared.get(i)))
            named.append(uri)
        stores.append(f"local://{path}?secret=*")
        destination = str(base / f"backups-{env}")
        backup_secrets(stores[-1], destination, [fingerprint], gnupg_home=str(home))
        restore_drill(destination, gnupg_home=str(home))
        destinations.append(destination)
    for uri in named[::5]:
        lease = Lease.new(str(uuid.uuid4()), None)
        journal.begin(
            secret=uri, runbook="bench", started_by="bench", parameters={}, consumers=[], versions={}, lease=lease
        )
        journal.end_run(lease, RotationState.COMPLETED)
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name("bench-rotation")
        for n, start in enumerate(range(0, len(named), 50)):
            client.create_deployment(
                flow_id,
                f"bench-{n}",
                parameters={"secrets": named[start : start + 50]},
                schedules=[DeploymentScheduleCreate(schedule=CronSchedule(cron="0 3 1 1 *"), active=True)],
            )
    return stores, destinations, str(journal.path)


def _steps(stores: list[str], destinations: list[str], journal: str) -> dict[str, float]:
    """Seconds of each step of the flow, called as plain functions (no task runs)."""
    from rotation.history import read_rotations
    from targets.posture.checks import assess
    from targets.posture.policy import PosturePolicy
    from targets.posture.render import markdown, table_rows
    from tasks.posture import inspect_secrets, read_backups, read_schedules

    timings: dict[str, float] = {}

    def timed(name: str, fn: Any, *args: Any) -> Any:
        start = time.perf_counter()
        result = fn(*args)
        timings[name] = round(time.perf_counter() - start, 3)
        return result

    facts = timed(
        "read the stores (describe + read + judge each value)",
        lambda: [f for s in stores for f in inspect_secrets.fn(s)],
    )
    rotations = timed("read the journal", read_rotations.fn, [f.uri for f in facts], journal)
    schedules = timed("read the deployments", read_schedules.fn)
    backups = timed("read the backup manifests and drills", lambda: [read_backups.fn(d) for d in destinations])
    report = timed(
        "check the policy", assess, stores, facts, rotations, schedules, backups, PosturePolicy(), datetime.now(UTC)
    )
    timed("render the table and markdown", lambda: (table_rows(report), markdown(report)))
    return timings


def main(runs: int, count: int) -> dict[str, Any]:
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from tests.fixtures.prefect import running_prefect_server

    base = Path(tempfile.mkdtemp(prefix="bench-posture-"))
    home, prefect_home = base / "gnupg", base / "prefect"
    home.mkdir(mode=0o700)
    prefect_home.mkdir()
    with running_prefect_server(prefect_home):
        from flows.posture import secret_posture

        started = time.perf_counter()
        stores, destinations, journal = _world(base, count, _keys(home), home)
        seeding = time.perf_counter() - started
        times, report = [], {}
        for _ in range(runs):
            start = time.perf_counter()
            report = secret_posture(stores, backups=destinations, journal=journal)
            times.append(time.perf_counter() - start)
        steps = _steps(stores, destinations, journal)
    shutil.rmtree(base, ignore_errors=True)
    result = {
        "secrets": report["counts"]["secrets"],
        "stores": len(stores),
        "runs": runs,
        "flow_run_median_s": round(statistics.median(times), 3),
        "flow_run_min_s": round(min(times), 3),
        "flow_run_max_s": round(max(times), 3),
        "per_secret_ms": round(statistics.median(times) / report["counts"]["secrets"] * 1000, 2),
        "steps_s": steps,
        "findings": {k: v for k, v in report["counts"].items() if k != "secrets"},
        "duplicate_findings": sum(f["check"] == "duplicate" for f in report["findings"]),
        "seeding_s": round(seeding, 1),
        "cpus": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 1),
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    print(
        json.dumps(
            main(int(sys.argv[1]) if len(sys.argv) > 1 else 5, int(sys.argv[2]) if len(sys.argv) > 2 else 1000),
            indent=2,
        )
    )
