"""The journal's own cost in one rotation: its calls as the JWT runbook makes them, without Prefect or a store.

    .venv/bin/python -m benchmarks.journal_calls [--rotations N] [--journal URL] [--out FILE]

Per rotation: begin, 13 named steps (7 that change something, written ahead with an undo for the first 3; 6 that
only look, deferred), each completed, a renewal and the end of the run; on an SQLite file in a new folder, or on
``--journal`` (``postgresql://...``). Prints the median and p95 milliseconds per rotation and writes them to JSON
(default benchmarks/results/journal_calls.json). To compare two trees side by side, run it from each in turn, for
instance with ``farm-bench --vs``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from rotation.journal import Journal, Lease, RotationState, UndoEntry

ROOT = Path(__file__).resolve().parents[1]
STEPS = 13


def one_rotation(journal: Journal, number: int) -> float:
    started = time.perf_counter()
    lease = Lease.new(str(uuid.uuid4()), str(uuid.uuid4()), 30)
    journal.begin(
        secret=f"bench-{number}-{uuid.uuid4().hex[:6]}",
        runbook="jwt-signing-key",
        started_by="bench",
        parameters={"policy": {"grace_seconds": 0}},
        consumers=[{"name": "auth"}],
        versions={"CURRENT": uuid.uuid4().hex},
        lease=lease,
    )
    for step in range(STEPS):
        changes = step % 2 == 0
        undo = UndoEntry(task="revert_secret", kwargs={"version": "v"}) if changes and step < 6 else None
        name = f"step-{step}"
        journal.start_step(lease, name, "stage" if changes else "check", {"n": step}, undo=undo, write_ahead=changes)
        journal.complete_step(lease, name, {"ok": True})
    journal.renew(lease)
    journal.end_run(lease, RotationState.COMPLETED)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rotations", type=int, default=200)
    parser.add_argument("--journal", help="a PostgreSQL URL; default an SQLite file in a new folder")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "journal_calls.json")
    args = parser.parse_args()
    journal = Journal(args.journal or Path(tempfile.mkdtemp(prefix="bench-journal-")) / "journal.db")
    one_rotation(journal, -1)  # the engine, the schema and SQLAlchemy's compiled cache
    times = sorted(one_rotation(journal, n) for n in range(args.rotations))
    report = {
        "backend": "postgresql" if args.journal else "sqlite",
        "rotations": args.rotations,
        "median_ms": round(statistics.median(times) * 1000, 2),
        "p95_ms": round(times[int(len(times) * 0.95) - 1] * 1000, 2),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
