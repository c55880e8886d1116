"""Measure a backup of many secrets and its restore, with the memory they use.

A local store of N secrets (500 by default, 64-character values) is backed up to a folder, encrypted to a key made
for the run in a temporary gpg home (ed25519/cv25519, as the tests make them), its manifest signed; then the backup
is verified, planned into an empty local store, restored secret by secret and every restored value checked: the
tasks called through their functions (``.fn``), without Prefect. Then the restore runbook (flows/restore.py: verify,
plan, approval given in advance, one journaled step and task run per secret, check) restores the same backup into
another empty store, on a Prefect server started for the benchmark (SQLite), with the journal in an SQLite file:
the difference is what the runbook's resumability costs. Each run uses fresh stores; the times are medians over
the runs; the memory is the peak of Python allocations (tracemalloc, in one extra run, since tracing slows the code)
and the largest resident size of this process (getrusage; gpg runs in child processes of a few MiB each).

    .venv/bin/python -m benchmarks.backup_restore [RUNS] [SECRETS]     # writes benchmarks/results/backup_restore.json
"""

from __future__ import annotations

import json
import resource
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gnupg
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

from flows.restore import restore_secrets
from rotation import RotationOptions
from rotation.approval import Preapproval
from stores import open_store
from targets.backup.archive import new_id
from tasks.backup import BackupRef, plan_restore, restore_secret, verify_backup, verify_restored, write_backup
from tests.fixtures.prefect import running_prefect_server

RESULTS = Path(__file__).parent / "results" / "backup_restore.json"
PHASES = ("backup", "verify", "plan", "restore", "check restored", "restore runbook")


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


def _one_run(base: Path, home: Path, key: str, count: int) -> dict[str, float]:
    """Seconds per phase for one backup of ``count`` secrets and its restore into an empty store."""
    run = uuid.uuid4().hex[:8]
    source = base / f"source-{run}.db"
    for i in range(count):
        open_store(f"local://{source}?secret=app/{i:04d}").create(secrets.token_urlsafe(48))
    destination, target = str(base / f"backups-{run}"), f"local://{base / f'target-{run}.db'}?secret=*"
    backup = BackupRef(destination=destination, backup_id=new_id(), gnupg_home=str(home), signer=key)
    restore_id = str(uuid.uuid4())
    options = RotationOptions(
        journal=str(base / f"journal-{run}.db"), started_by="bench", preapproved=Preapproval(approver="approver")
    )
    plan = None
    steps: dict[str, Callable[[], Any]] = {
        "backup": lambda: write_backup.fn(
            f"local://{source}?secret=app/*", destination, [key], "current", backup.backup_id, key, str(home)
        ),
        "verify": lambda: verify_backup.fn(backup),
        "plan": lambda: plan_restore.fn(backup, target),
        "restore": lambda: [restore_secret.fn(backup, planned, restore_id) for planned in plan.secrets],
        "check restored": lambda: verify_restored.fn(backup, plan),
        "restore runbook": lambda: restore_secrets(
            backup, f"local://{base / f'runbook-{run}.db'}?secret=*", options=options
        ),
    }
    times: dict[str, float] = {}
    for phase, step in steps.items():
        start = time.perf_counter()
        result = step()
        times[phase] = time.perf_counter() - start
        if phase == "plan":
            plan = result
    assert plan is not None and len(plan.secrets) == count and result["plan"]["create"] == count
    return times


def main(runs: int, count: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-backup-") as folder:
        base = Path(folder)
        home = base / "gnupg"
        home.mkdir(mode=0o700)
        (base / "prefect").mkdir()
        try:
            key = _keys(home)
            # No heartbeats, as the rotate command runs its flows: ending a heartbeat thread costs up to a second.
            with (
                running_prefect_server(base / "prefect"),
                temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
            ):
                _one_run(base, home, key, 5)  # warm-up: imports, the gpg-agent, key files, the server's first run
                timed = [_one_run(base, home, key, count) for _ in range(runs)]
                tracemalloc.start()
                _one_run(base, home, key, count)
                _, peak = tracemalloc.get_traced_memory()
                tracemalloc.stop()
        finally:
            subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], check=False)
    medians = {phase: statistics.median(t[phase] for t in timed) for phase in PHASES}
    result = {
        "secrets": count,
        "runs": runs,
        "median_seconds": {phase: round(value, 3) for phase, value in medians.items()},
        "restore_ms_per_secret": round(1000 * medians["restore"] / count, 2),
        "runbook_ms_per_secret": round(1000 * medians["restore runbook"] / count, 2),
        "peak_python_allocations_mib": round(peak / 2**20, 1),
        "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    arguments = [int(a) for a in sys.argv[1:]]
    print(json.dumps(main(*(arguments + [3, 500][len(arguments) :])), indent=2))
