"""The rotation journal: the durable state of every rotation, so that a crashed run can be resumed or undone.

One SQLite file (``ROTATE_JOURNAL``, default ``~/.local/state/secret-rotation/journal.db``) records, per rotation:
its state, the non-secret facts its plan found, the compensation stack (undo steps written before the step they
undo runs), recorded approvals and grace-period due times, and an audit trail of every step. A lock row per secret
keeps a second rotation of the same secret out. Nothing here ever holds a secret value.
"""

from __future__ import annotations

import enum
import json
import os
import socket
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from tenacity import retry, retry_if_exception, stop_after_delay, wait_random

from stores.errors import StoreError

DEFAULT_PATH = Path.home() / ".local" / "state" / "secret-rotation" / "journal.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rotations (
    id TEXT PRIMARY KEY, secret TEXT NOT NULL, runbook TEXT NOT NULL, state TEXT NOT NULL,
    started_by TEXT NOT NULL, started_at TEXT NOT NULL, updated_at TEXT NOT NULL,
    retired_at TEXT, flow_run_id TEXT, owner TEXT, parameters TEXT NOT NULL DEFAULT '{}',
    facts TEXT NOT NULL DEFAULT '{}', reason TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS locks (secret TEXT PRIMARY KEY, rotation_id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS undos (
    rotation_id TEXT NOT NULL, key TEXT NOT NULL, seq INTEGER NOT NULL, task TEXT NOT NULL,
    kwargs TEXT NOT NULL, deferred INTEGER NOT NULL, done_at TEXT, PRIMARY KEY (rotation_id, key)
);
CREATE TABLE IF NOT EXISTS marks (
    rotation_id TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (rotation_id, key)
);
CREATE TABLE IF NOT EXISTS steps (
    rotation_id TEXT NOT NULL, at TEXT NOT NULL, step TEXT NOT NULL, status TEXT NOT NULL, details TEXT NOT NULL
);
"""


class RotationState(enum.StrEnum):
    RUNNING = "running"
    WAITING = "waiting"  # a follow-up run is scheduled for the end of a grace period
    FAILED = "failed"  # failed after the point of no return: resume it
    ROLLBACK_FAILED = "rollback-failed"  # an undo step failed: fix the cause, roll back again
    COMPLETED = "completed"
    ROLLED_BACK = "rolled-back"

    @property
    def finished(self) -> bool:
        return self in (RotationState.COMPLETED, RotationState.ROLLED_BACK)


class RotationInProgress(StoreError):
    """A second rotation of a secret that is already being rotated."""


class RotationNotFound(StoreError):
    """No rotation with this id in the journal."""


class RotationRecord(BaseModel):
    id: str
    secret: str
    runbook: str
    state: RotationState
    started_by: str
    started_at: datetime
    updated_at: datetime
    retired_at: datetime | None = None
    flow_run_id: str | None = None
    owner: str | None = None
    parameters: dict[str, Any] = {}
    facts: dict[str, Any] = {}
    reason: str = ""


class UndoRecord(BaseModel):
    key: str
    seq: int
    task: str
    kwargs: dict[str, Any]
    deferred: bool
    done: bool


class StepRecord(BaseModel):
    at: datetime
    step: str
    status: str
    details: dict[str, Any]


def _now() -> datetime:
    return datetime.now(UTC)


def owner_tag() -> str:
    """Who is running a rotation right now: host and process id."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Journal:
    """The rotation journal in one SQLite file; safe for several processes at once."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path or os.environ.get("ROTATE_JOURNAL") or DEFAULT_PATH).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._create_schema()

    @retry(
        # Switching a new file to WAL needs it alone: SQLite answers "locked" at once, without its busy wait.
        retry=retry_if_exception(lambda exc: isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)),
        wait=wait_random(0.01, 0.2),
        stop=stop_after_delay(30),
        reraise=True,
    )
    def _create_schema(self) -> None:
        db = self._connect()
        try:
            db.execute("PRAGMA journal_mode=WAL")  # a property of the file: readers never block the writer
            db.executescript(_SCHEMA)
        finally:
            db.close()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA synchronous=FULL")
        return db

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            yield db
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        finally:
            db.close()

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        db = self._connect()
        try:
            yield db
        finally:
            db.close()

    # rotations and locks

    def begin(
        self,
        secret: str,
        runbook: str,
        started_by: str,
        parameters: dict[str, Any],
        marks: dict[str, dict[str, Any]] | None = None,
    ) -> RotationRecord:
        """Start a rotation of ``secret``, or refuse if one is already in progress.

        ``marks`` (the versions the rotation starts from, say) are recorded in the same transaction, so a crash
        cannot leave a rotation without them.
        """
        rotation_id = str(uuid.uuid4())
        now = _now().isoformat()
        with self._write() as db:
            held = db.execute("SELECT rotation_id FROM locks WHERE secret = ?", (secret,)).fetchone()
            if held:
                raise RotationInProgress(self._in_progress_message(db, secret, held["rotation_id"]))
            db.execute("INSERT INTO locks VALUES (?, ?)", (secret, rotation_id))
            db.execute(
                "INSERT INTO rotations (id, secret, runbook, state, started_by, started_at, updated_at, owner,"
                " parameters) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    rotation_id,
                    secret,
                    runbook,
                    RotationState.RUNNING,
                    started_by,
                    now,
                    now,
                    owner_tag(),
                    json.dumps(parameters),
                ),
            )
            for key, value in (marks or {}).items():
                db.execute("INSERT INTO marks VALUES (?, ?, ?)", (rotation_id, key, json.dumps(value)))
        return self.get(rotation_id)

    def _in_progress_message(self, db: sqlite3.Connection, secret: str, rotation_id: str) -> str:
        row = db.execute("SELECT * FROM rotations WHERE id = ?", (rotation_id,)).fetchone()
        state = row["state"] if row else "unknown"
        started = f", started {row['started_at']} by {row['started_by']}" if row else ""
        return (
            f"rotation {rotation_id} of {secret} is already in progress (state {state}{started}); only one rotation "
            f"of a secret may run at a time. If its run has stopped, resume it with `rotate resume {rotation_id}` "
            f"or undo it with `rotate rollback {rotation_id}`."
        )

    def get(self, rotation_id: str) -> RotationRecord:
        with self._read() as db:
            row = db.execute("SELECT * FROM rotations WHERE id = ?", (rotation_id,)).fetchone()
        if row is None:
            raise RotationNotFound(
                f"no rotation {rotation_id} in the journal {self.path}; `rotate status` lists the known rotations"
            )
        return _record(row)

    def claim(self, rotation_id: str, flow_run_id: str | None) -> RotationRecord:
        """Take over a rotation for the run that resumes (or first runs) it."""
        with self._write() as db:
            db.execute(
                "UPDATE rotations SET flow_run_id = COALESCE(?, flow_run_id), owner = ?, updated_at = ? WHERE id = ?",
                (flow_run_id, owner_tag(), _now().isoformat(), rotation_id),
            )
        return self.get(rotation_id)

    def list(self, active_only: bool = False) -> list[RotationRecord]:
        query = "SELECT * FROM rotations"
        if active_only:
            query += " WHERE id IN (SELECT rotation_id FROM locks)"
        with self._read() as db:
            rows = db.execute(query + " ORDER BY started_at DESC").fetchall()
        return [_record(row) for row in rows]

    def set_state(self, rotation_id: str, state: RotationState, reason: str = "") -> None:
        """Move a rotation to ``state``; a finished rotation releases its secret's lock."""
        with self._write() as db:
            db.execute(
                "UPDATE rotations SET state = ?, reason = ?, updated_at = ? WHERE id = ?",
                (state, reason, _now().isoformat(), rotation_id),
            )
            if state.finished:
                db.execute("DELETE FROM locks WHERE rotation_id = ?", (rotation_id,))

    def mark_retired(self, rotation_id: str) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE rotations SET retired_at = COALESCE(retired_at, ?), updated_at = ? WHERE id = ?",
                (_now().isoformat(), _now().isoformat(), rotation_id),
            )

    def record_facts(self, rotation_id: str, facts: dict[str, Any]) -> dict[str, Any]:
        """Record facts the plan found; a fact recorded once keeps its first value (a resumed run gets it back)."""
        with self._write() as db:
            row = db.execute("SELECT facts FROM rotations WHERE id = ?", (rotation_id,)).fetchone()
            known = json.loads(row["facts"])
            merged = {**facts, **known}
            if merged != known:
                db.execute("UPDATE rotations SET facts = ? WHERE id = ?", (json.dumps(merged), rotation_id))
        return merged

    # the compensation stack

    def push_undo(self, rotation_id: str, key: str, task: str, kwargs: dict[str, Any], deferred: bool) -> None:
        """Add an undo step once per ``key`` (a resumed run pushes the same keys again)."""
        with self._write() as db:
            seq = db.execute(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM undos WHERE rotation_id = ?", (rotation_id,)
            ).fetchone()[0]
            db.execute(
                "INSERT OR IGNORE INTO undos (rotation_id, key, seq, task, kwargs, deferred) VALUES (?, ?, ?, ?, ?, ?)",
                (rotation_id, key, seq, task, json.dumps(kwargs), int(deferred)),
            )

    def undos(self, rotation_id: str) -> list[UndoRecord]:
        """Undo steps in the order they must run: the stack from the top, then the deferred ones."""
        with self._read() as db:
            rows = db.execute(
                "SELECT * FROM undos WHERE rotation_id = ? ORDER BY deferred, seq DESC", (rotation_id,)
            ).fetchall()
        return [
            UndoRecord(
                key=r["key"],
                seq=r["seq"],
                task=r["task"],
                kwargs=json.loads(r["kwargs"]),
                deferred=bool(r["deferred"]),
                done=r["done_at"] is not None,
            )
            for r in rows
        ]

    def mark_undone(self, rotation_id: str, key: str) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE undos SET done_at = ? WHERE rotation_id = ? AND key = ?",
                (_now().isoformat(), rotation_id, key),
            )

    # approvals, waits and the audit trail

    def mark(self, rotation_id: str, key: str, value: dict[str, Any] | None = None) -> dict[str, Any]:
        """Record ``value`` under ``key`` the first time; return what was recorded (``{}`` when only reading)."""
        with self._write() as db:
            row = db.execute("SELECT value FROM marks WHERE rotation_id = ? AND key = ?", (rotation_id, key)).fetchone()
            if row:
                return json.loads(row["value"])
            if value is None:
                return {}
            db.execute("INSERT INTO marks VALUES (?, ?, ?)", (rotation_id, key, json.dumps(value)))
        return value

    def due_time(self, rotation_id: str, key: str, seconds: float) -> datetime:
        """When the wait ``key`` ends: now + ``seconds`` the first time it is asked, the same instant afterwards."""
        due = (_now() + timedelta(seconds=seconds)).isoformat()
        return datetime.fromisoformat(self.mark(rotation_id, key, {"due": due})["due"])

    def record_step(self, rotation_id: str, step: str, status: str, details: dict[str, Any] | None = None) -> None:
        with self._write() as db:
            db.execute(
                "INSERT INTO steps VALUES (?, ?, ?, ?, ?)",
                (rotation_id, _now().isoformat(), step, status, json.dumps(details or {})),
            )

    def steps(self, rotation_id: str) -> list[StepRecord]:
        with self._read() as db:
            rows = db.execute("SELECT * FROM steps WHERE rotation_id = ? ORDER BY rowid", (rotation_id,)).fetchall()
        return [
            StepRecord(at=r["at"], step=r["step"], status=r["status"], details=json.loads(r["details"])) for r in rows
        ]


def _record(row: sqlite3.Row) -> RotationRecord:
    data = dict(row)
    data["parameters"] = json.loads(data["parameters"])
    data["facts"] = json.loads(data["facts"])
    return RotationRecord.model_validate(data)
