"""The rotation journal: the durable state of every rotation, so that a stopped run can be resumed or undone.

Per rotation it records the state, the parameters it was started with, the versions it started from, each named
step (started, completed, and the facts it returned), the compensation stack (undo steps written in the same
transaction as the start of the step they undo), the lease of the run that owns it, and an audit trail. A lock row
per secret identity keeps a second rotation of the same secret out. Nothing here ever holds a secret value.

One SQLAlchemy Core schema, two backends: an SQLite file (the default; WAL, ``BEGIN IMMEDIATE`` for writes, so
processes on one machine serialise) or PostgreSQL (``ROTATE_JOURNAL=postgresql://...``) for workers on several
machines, where the lock row's primary key and the lease's compare-and-set keep two workers apart.

A step costs one transaction. A step that changes something writes its start (with its undo, the point of no return
and its audit record) before it acts: that is what lets a resumed run, or a rollback, know what may have been done.
What needs no such write-ahead (a step's completion, and the whole record of a step that only looked: a check, a
verification, an approval) is kept in memory and written in the next transaction of the same rotation: the next
step's start, an audit record, the end of the run, or the lease's renewal (so nothing waits longer than a third of
a lease). A run killed before then has lost only records of steps a resumed run can safely do again, and does: steps
are idempotent, and every change was preceded by the durable record of what came before it. A point of no return
(a completion with ``retire``) is written at once.
"""

from __future__ import annotations

import contextlib
import enum
import os
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.types import TypeDecorator
from tenacity import retry, retry_if_exception, stop_after_delay, wait_random

from errors import BadInput, Conflict, NotFound, Refused, Unreachable
from rotation.settings import settings
from stores.errors import InvalidStoreURI
from stores.uri import SecretURI

SCHEMA_VERSION = 2
#: Marks an SQLite file as a journal (``PRAGMA application_id``), so that no other database is ever written to.
APPLICATION_ID = 0x524F544A  # "ROTJ"


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


class RotationInProgress(Conflict):
    """A second rotation of a secret that is already being rotated."""


class RotationNotFound(NotFound):
    """No rotation with this id in the journal."""


class LeaseLost(Refused):
    """Another run took over this rotation (its lease had expired): this run must stop acting on it."""


class NotAJournal(BadInput):
    """The file named as the journal is something else; it is left exactly as it was."""


class _UtcDateTime(TypeDecorator[datetime]):
    """Timestamps in UTC on both backends (SQLite keeps no time zone)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


_metadata = sa.MetaData()
_meta = sa.Table(
    "journal_meta", _metadata, sa.Column("key", sa.String(64), primary_key=True), sa.Column("value", sa.Text)
)
_rotations = sa.Table(
    "rotations",
    _metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("secret", sa.Text, nullable=False, index=True),
    sa.Column("runbook", sa.String(100), nullable=False),
    sa.Column("state", sa.String(20), nullable=False),
    sa.Column("started_by", sa.Text, nullable=False),
    sa.Column("started_at", _UtcDateTime, nullable=False),
    sa.Column("updated_at", _UtcDateTime, nullable=False),
    sa.Column("retired_at", _UtcDateTime),
    sa.Column("parameters", sa.JSON, nullable=False),
    sa.Column("consumers", sa.JSON, nullable=False),
    sa.Column("versions", sa.JSON, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("flow_run_id", sa.String(36)),
    sa.Column("lease_token", sa.String(36)),
    sa.Column("lease_expires_at", _UtcDateTime),
)
_locks = sa.Table(
    "locks",
    _metadata,
    sa.Column("secret", sa.String(1024), primary_key=True),
    sa.Column("rotation_id", sa.String(36), nullable=False),
)
_steps = sa.Table(
    "steps",
    _metadata,
    sa.Column("rotation_id", sa.String(36), primary_key=True),
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("kind", sa.String(20), nullable=False),
    sa.Column("started_at", _UtcDateTime, nullable=False),
    sa.Column("completed_at", _UtcDateTime),
    sa.Column("detail", sa.JSON, nullable=False),
    sa.Column("facts", sa.JSON),
)
_undos = sa.Table(
    "undos",
    _metadata,
    sa.Column("rotation_id", sa.String(36), primary_key=True),
    sa.Column("step", sa.String(200), primary_key=True),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("task", sa.String(200), nullable=False),
    sa.Column("kwargs", sa.JSON, nullable=False),
    sa.Column("deferred", sa.Boolean, nullable=False),
    sa.Column("done_at", _UtcDateTime),
)
_events = sa.Table(
    "events",
    _metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("rotation_id", sa.String(36), nullable=False, index=True),
    sa.Column("at", _UtcDateTime, nullable=False),
    sa.Column("step", sa.String(200), nullable=False),
    sa.Column("status", sa.String(40), nullable=False),
    sa.Column("details", sa.JSON, nullable=False),
)


# A rotation's own statements, built once. Built per call, SQLAlchemy coerces and hashes each anew (about 1,100
# coercions per rotation) to find the same compiled form in its cache: most of the journal's time per rotation.
_ROTATION = sa.select(_rotations).where(_rotations.c.id == sa.bindparam("rid"))
_ROTATION_FOR_UPDATE = _ROTATION.with_for_update()
_LOCK_HOLDER = sa.select(_locks.c.rotation_id).where(_locks.c.secret == sa.bindparam("held"))
_LOCKS = sa.select(_locks.c.secret, _locks.c.rotation_id)
# PostgreSQL: a selection and a secret it covers hold different lock rows, so no key conflict stops two workers that
# check at once; beginnings take turns instead (SQLite's writers do already).
_BEGINNINGS_TAKE_TURNS = sa.text("SELECT pg_advisory_xact_lock(:key)").bindparams(key=APPLICATION_ID + 1)
_STEP = sa.select(_steps).where(_steps.c.rotation_id == sa.bindparam("rid"), _steps.c.name == sa.bindparam("step"))
_NEXT_STEP_SEQ = sa.select(sa.func.coalesce(sa.func.max(_steps.c.seq), 0) + 1).where(
    _steps.c.rotation_id == sa.bindparam("rid")
)
_UNDO = sa.select(_undos.c.step).where(
    _undos.c.rotation_id == sa.bindparam("rid"), _undos.c.step == sa.bindparam("key")
)
_NEXT_UNDO_SEQ = sa.select(sa.func.coalesce(sa.func.max(_undos.c.seq), 0) + 1).where(
    _undos.c.rotation_id == sa.bindparam("rid")
)
_INSERT_LOCK, _INSERT_ROTATION = sa.insert(_locks), sa.insert(_rotations)
_INSERT_STEP, _INSERT_UNDO, _INSERT_EVENT = sa.insert(_steps), sa.insert(_undos), sa.insert(_events)
# Updates set the columns their execution's parameters name (besides the bind parameters of their WHERE).
_UPDATE_ROTATION = sa.update(_rotations).where(_rotations.c.id == sa.bindparam("rid"))
_RENEW = _UPDATE_ROTATION.where(_rotations.c.lease_token == sa.bindparam("token"))
_MARK_RETIRED = _UPDATE_ROTATION.where(_rotations.c.retired_at.is_(None))
_UPDATE_STEP = sa.update(_steps).where(
    _steps.c.rotation_id == sa.bindparam("rid"), _steps.c.name == sa.bindparam("step")
)
_UNLOCK = sa.delete(_locks).where(_locks.c.rotation_id == sa.bindparam("rid"))


class RotationRecord(BaseModel):
    id: str
    secret: str
    runbook: str
    state: RotationState
    started_by: str
    started_at: datetime
    updated_at: datetime
    retired_at: datetime | None = None
    parameters: dict[str, Any] = {}
    consumers: list[dict[str, Any]] = []
    versions: dict[str, str | None] = {}
    reason: str = ""
    flow_run_id: str | None = None
    lease_token: str | None = None
    lease_expires_at: datetime | None = None

    def lease_live(self, now: datetime | None = None) -> bool:
        """Whether a run holds this rotation now (its lease has not expired)."""
        return (
            self.lease_token is not None
            and self.lease_expires_at is not None
            and self.lease_expires_at > (now or _now())
        )

    def run_gone(self, grace_seconds: float, now: datetime | None = None) -> bool:
        """Whether its run has stopped for good: it released its lease, or has not renewed it for ``grace_seconds``
        past its expiry. A run on a loaded machine renews late, and goes on if nobody took the rotation over."""
        if self.lease_token is None or self.lease_expires_at is None:
            return True
        return self.lease_expires_at + timedelta(seconds=grace_seconds) <= (now or _now())


class StepRecord(BaseModel):
    name: str
    seq: int
    kind: str
    started_at: datetime
    completed_at: datetime | None = None
    detail: dict[str, Any] = {}
    facts: Any = None

    @property
    def completed(self) -> bool:
        return self.completed_at is not None


class UndoRecord(BaseModel):
    step: str
    seq: int
    task: str
    kwargs: dict[str, Any]
    deferred: bool
    done: bool


class AuditEvent(BaseModel):
    at: datetime
    step: str
    status: str
    details: dict[str, Any]


@dataclass(frozen=True)
class Lease:
    """One run's ownership of one rotation: a random token, renewed while the run lives."""

    rotation_id: str
    token: str
    flow_run_id: str | None
    seconds: float

    @classmethod
    def new(cls, rotation_id: str, flow_run_id: str | None, seconds: float | None = None) -> Lease:
        return cls(rotation_id, str(uuid.uuid4()), flow_run_id, seconds or settings().lease_seconds)

    def expiry(self) -> datetime:
        return _now() + timedelta(seconds=self.seconds)


@dataclass(frozen=True)
class UndoEntry:
    """An undo recorded with the start of the step it undoes: a task's name and its arguments. ``deferred`` undos run
    after the stack (the consumers' restart, once the secret is reverted); ``key`` names an undo several steps share
    (default: the step's name), recorded once."""

    task: str
    kwargs: dict[str, Any]
    deferred: bool = False
    key: str | None = None


@dataclass(frozen=True)
class TakeOver:
    """A stopped rotation now owned by a new run; ``superseded`` is the flow run that owned it before."""

    record: RotationRecord
    superseded: str | None


def _now() -> datetime:
    return datetime.now(UTC)


_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def _is_url(location: str) -> bool:
    return "://" in location


def _sqlite_engine(path: Path) -> Engine:
    engine = sa.create_engine(f"sqlite:///{path}", connect_args={"timeout": 30, "isolation_level": None})

    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi: sqlite3.Connection, _record: Any) -> None:
        dbapi.execute("PRAGMA synchronous=FULL")

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        # Writers take the lock up front, so two processes never both read then both write.
        conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get("read_only") else "BEGIN IMMEDIATE")

    return engine


def _sqlite_kind(path: Path) -> str:
    """ "journal", "new" (absent or empty: safe to create) or "other", read without writing a byte."""
    if not path.exists() or path.stat().st_size == 0:
        return "new"
    try:
        # immutable: not even the WAL index (-shm) of another database is touched
        db = sqlite3.connect(f"file:{quote(str(path))}?mode=ro&immutable=1", uri=True)
        try:
            (app_id,) = db.execute("PRAGMA application_id").fetchone()
        finally:
            db.close()
    except sqlite3.DatabaseError:
        return "other"
    return "journal" if app_id == APPLICATION_ID else "other"


@retry(
    # Switching a new file to WAL needs it alone: SQLite answers "locked" at once, without its busy wait.
    retry=retry_if_exception(lambda exc: isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)),
    wait=wait_random(0.01, 0.2),
    stop=stop_after_delay(30),
    reraise=True,
)
def _create_sqlite(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(FileExistsError):  # another process creates it too: the schema below is idempotent
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    db = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")  # a property of the file: readers never block the writer
        db.execute(f"PRAGMA application_id={APPLICATION_ID}")
    finally:
        db.close()


def _engine(location: str, create: bool) -> Engine:
    with _engines_lock:
        engine = _engines.get(location)
        if engine is not None:
            return engine
        if _is_url(location):
            url = sa.make_url(location)
            if url.drivername == "postgresql":
                url = url.set(drivername="postgresql+psycopg2")  # the driver this project installs
            engine = sa.create_engine(url, pool_pre_ping=True)
        else:
            path = Path(location)
            kind = _sqlite_kind(path)
            if kind == "other":
                raise NotAJournal(
                    f"{path} is not a rotation journal (it is some other file); it was left as it was. Point "
                    "ROTATE_JOURNAL (or --journal) at a journal, or at a path that does not exist yet"
                )
            if kind == "new":
                if not create:
                    raise NotFound(f"no rotation journal at {path}: no rotation has been run with it yet")
                _create_sqlite(path)
            engine = _sqlite_engine(path)
        try:
            with engine.begin() as conn:
                if engine.dialect.name == "postgresql":
                    # Workers starting together must not race to create the same tables.
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": APPLICATION_ID})
                _metadata.create_all(conn)
                version = conn.execute(sa.select(_meta.c.value).where(_meta.c.key == "schema")).scalar()
                if version is None:
                    conn.execute(sa.insert(_meta).values(key="schema", value=str(SCHEMA_VERSION)))
                elif version != str(SCHEMA_VERSION):
                    raise NotAJournal(
                        f"the journal {_display(location)} has schema version {version}; this version of the "
                        f"project reads version {SCHEMA_VERSION}: finish its rotations with the version that "
                        "started them, or start a new journal"
                    )
        except OperationalError as exc:
            raise Unreachable(
                f"cannot open the rotation journal {_display(location)}: {type(exc.orig).__name__}"
            ) from None
        _engines[location] = engine
        return engine


def _overlapping(conn: Connection, secret: str) -> str | None:
    """The rotation holding a lock that names a secret in common with ``secret``: a selection (a restore's
    ``prod/*``) and a secret or selection it covers."""
    mine = _place(secret)
    if mine is None:
        return None
    for held, rotation_id in conn.execute(_LOCKS):
        theirs = _place(held)
        if theirs is not None and mine.overlaps(theirs):
            return rotation_id
    return None


def _place(secret: str) -> SecretURI | None:
    try:
        return SecretURI.parse(secret)
    except InvalidStoreURI:
        return None  # not a store URI (a test's name): it locks itself alone


def _display(location: str) -> str:
    return sa.make_url(location).render_as_string(hide_password=True) if _is_url(location) else location


class Journal:
    """The rotation journal at ``location`` (a path or a postgresql:// URL; default ``ROTATE_JOURNAL``).

    ``create=False`` opens only an existing journal (for commands that only read): nothing is created or changed.
    """

    def __init__(self, location: str | os.PathLike[str] | None = None, *, create: bool = True) -> None:
        raw = str(location) if location else settings().journal
        self.location = raw if _is_url(raw) else str(Path(raw).expanduser().absolute())
        self._engine = _engine(self.location, create)
        # Writes kept for the next transaction of the rotation this process owns, with the lease that owns it.
        self._deferred: dict[str, tuple[Lease, list[Callable[[Connection], None]]]] = {}
        self._ended: set[str] = set()  # leases whose run has ended: nothing is left to release
        # The lease's renewal thread writes too: a rotation's transactions (and its deferred writes) keep their order.
        self._writing = threading.RLock()

    @property
    def path(self) -> Path | None:
        """The journal's file (None for a PostgreSQL journal)."""
        return None if _is_url(self.location) else Path(self.location)

    @property
    def display(self) -> str:
        """Where the journal is, for people (a URL's password hidden)."""
        return _display(self.location)

    @contextmanager
    def _write(self, rotation_id: str | None = None, lease: Lease | None = None) -> Iterator[Connection]:
        """A write transaction. For a rotation (``rotation_id``, or ``lease``'s) it first checks ``lease`` is still
        this run's and writes what was deferred, all in the same transaction."""
        rid = lease.rotation_id if lease is not None else rotation_id
        with self._writing, self._engine.begin() as conn:
            if lease is not None:
                self._owned(conn, lease)
            deferred = self._deferred.get(rid) if rid is not None else None
            if deferred is not None:
                owner, writes = deferred
                if lease is None:
                    self._owned(conn, owner)
                for write in writes:
                    write(conn)
            yield conn
            if deferred is not None:
                del self._deferred[rid]

    def _defer(self, lease: Lease, write: Callable[[Connection], None]) -> None:
        with self._writing:
            self._deferred.setdefault(lease.rotation_id, (lease, []))[1].append(write)

    def _flush(self, rotation_id: str) -> None:
        """Write what this process deferred for ``rotation_id``, so that reading it here sees its own steps."""
        if rotation_id in self._deferred:
            with self._write(rotation_id):
                pass

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._engine.connect() as conn:
            conn = conn.execution_options(read_only=True)
            with conn.begin():
                yield conn

    # -- rotations, locks and leases ------------------------------------------------------------------------------

    def begin(
        self,
        *,
        secret: str,
        runbook: str,
        started_by: str,
        parameters: dict[str, Any],
        consumers: list[dict[str, Any]],
        versions: dict[str, str | None],
        lease: Lease,
    ) -> RotationRecord:
        """Start rotation ``lease.rotation_id`` of ``secret`` owned by ``lease``, or refuse if one is in progress."""
        now = _now()
        try:
            with self._write() as conn:
                if conn.dialect.name == "postgresql":
                    conn.execute(_BEGINNINGS_TAKE_TURNS)
                held = conn.execute(_LOCK_HOLDER, {"held": secret}).scalar() or _overlapping(conn, secret)
                if held is not None:
                    raise RotationInProgress(self._in_progress_message(conn, secret, held))
                conn.execute(_INSERT_LOCK, {"secret": secret, "rotation_id": lease.rotation_id})
                conn.execute(
                    _INSERT_ROTATION,
                    {
                        "id": lease.rotation_id,
                        "secret": secret,
                        "runbook": runbook,
                        "state": RotationState.RUNNING,
                        "started_by": started_by,
                        "started_at": now,
                        "updated_at": now,
                        "parameters": parameters,
                        "consumers": consumers,
                        "versions": versions,
                        "reason": "",
                        "flow_run_id": lease.flow_run_id,
                        "lease_token": lease.token,
                        "lease_expires_at": lease.expiry(),
                    },
                )
                self._event(conn, lease.rotation_id, "rotation", "started", runbook=runbook, flow_run=lease.flow_run_id)
                return self._get(conn, lease.rotation_id)
        except IntegrityError:
            # Another worker inserted the lock row between our read and our insert (PostgreSQL).
            with self._read() as conn:
                held = conn.execute(_LOCK_HOLDER, {"held": secret}).scalar()
                raise RotationInProgress(self._in_progress_message(conn, secret, held or "?")) from None

    def _in_progress_message(self, conn: Connection, secret: str, rotation_id: str) -> str:
        row = conn.execute(_ROTATION, {"rid": rotation_id}).mappings().first()
        if row is None:
            return f"a rotation of {secret} is already in progress; only one rotation of a secret may run at a time"
        record = RotationRecord.model_validate(dict(row))
        owner = f"its run {record.flow_run_id} is alive" if record.lease_live() else "its run has stopped"
        of = secret if record.secret == secret else f"{record.secret} (which shares secrets with {secret})"
        return (
            f"rotation {rotation_id} of {of} is already in progress (state {record.state}, started "
            f"{record.started_at:%Y-%m-%d %H:%M} UTC by {record.started_by}; {owner}); only one rotation of a "
            f"secret may run at a time. Wait for it, or once its run has stopped resume it with `rotate resume "
            f"{rotation_id}` or undo it with `rotate rollback {rotation_id}`"
        )

    def take_over(self, rotation_id: str, lease: Lease, purpose: str, operator: str | None = None) -> TakeOver:
        """Give a stopped rotation to ``lease``'s run, to ``purpose`` ("resume" or "rollback") it, at the request of
        ``operator`` (recorded for the audit trail).

        Refused while another run's lease is live, for a finished rotation, a rollback past the point of no return,
        and a resume of a half-done rollback.
        """
        with self._write() as conn:
            record = self._get(conn, rotation_id, for_update=True)
            if record.state.finished:
                raise Refused(
                    f"rotation {rotation_id} of {record.secret} is already {record.state}; there is nothing to "
                    f"{purpose}" + ("; start a new rotation instead" if purpose == "resume" else "")
                )
            if purpose == "rollback" and record.retired_at is not None:
                raise Refused(
                    f"rotation {rotation_id} of {record.secret} passed its point of no return at "
                    f"{record.retired_at:%Y-%m-%d %H:%M:%S} UTC (the old credential was retired); it can only go "
                    f"forward: `rotate resume {rotation_id}`"
                )
            if purpose == "resume" and record.state is RotationState.ROLLBACK_FAILED:
                raise Refused(
                    f"rotation {rotation_id} of {record.secret} was being rolled back; finish that first: "
                    f"`rotate rollback {rotation_id}`"
                )
            if record.lease_live() and record.lease_token != lease.token:
                raise Refused(
                    f"rotation {rotation_id} of {record.secret} is owned by flow run {record.flow_run_id}, which "
                    f"is still alive (its lease runs until {record.lease_expires_at:%H:%M:%S} UTC and is renewed "
                    f"while it lives); wait for it to finish, or cancel that run, then {purpose} again"
                )
            conn.execute(
                _UPDATE_ROTATION,
                {
                    "rid": rotation_id,
                    "lease_token": lease.token,
                    "lease_expires_at": lease.expiry(),
                    "flow_run_id": lease.flow_run_id or record.flow_run_id,
                    "state": RotationState.RUNNING if purpose == "resume" else record.state,
                    "updated_at": _now(),
                },
            )
            superseded = record.flow_run_id if record.flow_run_id != lease.flow_run_id else None
            self._event(
                conn,
                rotation_id,
                "rotation",
                f"{purpose}-claimed",
                flow_run=lease.flow_run_id,
                superseded=superseded,
                operator=operator,
            )
            return TakeOver(self._get(conn, rotation_id), superseded)

    def renew(self, lease: Lease) -> bool:
        """Extend ``lease`` (writing what was deferred); False if another run has taken the rotation over."""
        try:
            with self._write(lease=lease):
                return True
        except LeaseLost:
            return False

    def _renew(self, conn: Connection, lease: Lease) -> bool:
        result = conn.execute(
            _RENEW, {"rid": lease.rotation_id, "token": lease.token, "lease_expires_at": lease.expiry()}
        )
        return result.rowcount == 1

    def _owned(self, conn: Connection, lease: Lease) -> None:
        if not self._renew(conn, lease):
            raise LeaseLost(
                f"rotation {lease.rotation_id} was taken over by another run (this run's lease expired); this run "
                "stops here without changing anything more"
            )

    def release(self, lease: Lease) -> None:
        """Give up ``lease`` (the run stops without ending the rotation), writing what was deferred."""
        if lease.token in self._ended:
            return
        with contextlib.suppress(LeaseLost), self._write(lease=lease) as conn:
            conn.execute(_UPDATE_ROTATION, {"rid": lease.rotation_id, "lease_token": None, "lease_expires_at": None})

    def end_run(self, lease: Lease, state: RotationState, reason: str = "") -> None:
        """This run ends, leaving the rotation in ``state``: the lease is given up, and a finished rotation releases its
        secret's lock."""
        with self._write(lease=lease) as conn:
            conn.execute(
                _UPDATE_ROTATION,
                {
                    "rid": lease.rotation_id,
                    "state": state,
                    "reason": reason,
                    "updated_at": _now(),
                    "lease_token": None,
                    "lease_expires_at": None,
                },
            )
            if state.finished:
                conn.execute(_UNLOCK, {"rid": lease.rotation_id})
            self._event(conn, lease.rotation_id, "rotation", str(state), **({"reason": reason} if reason else {}))
        self._ended.add(lease.token)

    def forget(self, lease: Lease) -> None:
        """Remove a new rotation that changed nothing (its checks refused the input): as if it never began."""
        with self._write(lease=lease) as conn:
            for table in (_events, _steps, _undos):
                conn.execute(sa.delete(table).where(table.c.rotation_id == lease.rotation_id))
            conn.execute(_UNLOCK, {"rid": lease.rotation_id})
            conn.execute(sa.delete(_rotations).where(_rotations.c.id == lease.rotation_id))
        self._ended.add(lease.token)

    def get(self, rotation_id: str) -> RotationRecord:
        with self._read() as conn:
            return self._get(conn, rotation_id)

    def _get(self, conn: Connection, rotation_id: str, for_update: bool = False) -> RotationRecord:
        row = conn.execute(_ROTATION_FOR_UPDATE if for_update else _ROTATION, {"rid": rotation_id}).mappings().first()
        if row is None:
            raise RotationNotFound(
                f"no rotation {rotation_id} in the journal {self.display}; `rotate status` lists the known rotations"
            )
        return RotationRecord.model_validate(dict(row))

    def list(self, active_only: bool = False) -> list[RotationRecord]:
        query = sa.select(_rotations).order_by(_rotations.c.started_at.desc())
        if active_only:
            query = query.where(_rotations.c.id.in_(sa.select(_locks.c.rotation_id)))
        with self._read() as conn:
            return [RotationRecord.model_validate(dict(row)) for row in conn.execute(query).mappings()]

    # -- named steps and the compensation stack -------------------------------------------------------------------

    def steps(self, rotation_id: str) -> dict[str, StepRecord]:
        """The steps recorded for a rotation, by name, in the order they first started."""
        self._flush(rotation_id)
        with self._read() as conn:
            rows = conn.execute(
                sa.select(_steps).where(_steps.c.rotation_id == rotation_id).order_by(_steps.c.seq)
            ).mappings()
            return {row["name"]: StepRecord.model_validate(dict(row)) for row in rows}

    def start_step(
        self,
        lease: Lease,
        name: str,
        kind: str,
        detail: dict[str, Any],
        *,
        undo: UndoEntry | None = None,
        retire: bool = False,
        write_ahead: bool = True,
    ) -> StepRecord:
        """Record that step ``name`` starts, in one transaction with its undo and the point of no return for a
        retirement. A step started before keeps its first ``detail`` (a wait's due time, say) and its undo, so a
        resumed run picks them up.

        ``write_ahead=False`` for a step that only looks (nothing to undo, nothing to retire): its start is written
        with its completion, and the record returned is the one given."""
        now = _now()

        def start(conn: Connection) -> StepRecord:
            rid = lease.rotation_id
            row = conn.execute(_STEP, {"rid": rid, "step": name}).mappings().first()
            if row is None:
                seq = conn.execute(_NEXT_STEP_SEQ, {"rid": rid}).scalar_one()
                conn.execute(
                    _INSERT_STEP,
                    {"rotation_id": rid, "name": name, "seq": seq, "kind": kind, "started_at": now, "detail": detail},
                )
                record = StepRecord(name=name, seq=seq, kind=kind, started_at=now, detail=detail)
            else:
                record = StepRecord.model_validate(dict(row))
            if undo is not None:
                self._push_undo(conn, rid, undo.key or name, undo)
            if retire:
                self._mark_retired(conn, rid, now)
            self._event(conn, rid, name, "started", at=now)
            return record

        if not write_ahead:
            if undo is not None or retire:
                raise ValueError(f"step {name!r} changes something: its start must be written before it acts")
            self._defer(lease, start)
            return StepRecord(name=name, seq=0, kind=kind, started_at=now, detail=detail)
        with self._write(lease=lease) as conn:
            return start(conn)

    def _mark_retired(self, conn: Connection, rotation_id: str, now: datetime) -> None:
        conn.execute(_MARK_RETIRED, {"rid": rotation_id, "retired_at": now})

    def _push_undo(self, conn: Connection, rid: str, key: str, undo: UndoEntry) -> None:
        if conn.execute(_UNDO, {"rid": rid, "key": key}).first() is None:
            seq = conn.execute(_NEXT_UNDO_SEQ, {"rid": rid}).scalar_one()
            conn.execute(
                _INSERT_UNDO,
                {"rotation_id": rid, "step": key, "seq": seq, "task": undo.task, "kwargs": undo.kwargs,
                 "deferred": undo.deferred},
            )  # fmt: skip

    def complete_step(self, lease: Lease, name: str, facts: Any, *, retire: bool = False) -> None:
        """Record that step ``name`` completed and what it returned (facts, never values), with the rotation's next
        transaction. ``retire`` makes its completion the point of no return (an approval on which a person removes
        the old credential): that is written at once."""
        now = _now()

        def complete(conn: Connection) -> None:
            conn.execute(_UPDATE_STEP, {"rid": lease.rotation_id, "step": name, "completed_at": now, "facts": facts})
            if retire:
                self._mark_retired(conn, lease.rotation_id, now)
            self._event(conn, lease.rotation_id, name, "completed", at=now)

        self._defer(lease, complete)
        if retire:
            self._flush(lease.rotation_id)

    def undos(self, rotation_id: str) -> list[UndoRecord]:
        """Undo steps in the order they must run: the stack from the top, then the deferred ones."""
        with self._read() as conn:
            rows = conn.execute(
                sa.select(_undos)
                .where(_undos.c.rotation_id == rotation_id)
                .order_by(_undos.c.deferred, _undos.c.seq.desc())
            ).mappings()
            return [
                UndoRecord(
                    **{k: row[k] for k in ("step", "seq", "task", "kwargs", "deferred")},
                    done=row["done_at"] is not None,
                )
                for row in rows
            ]

    def mark_undone(self, lease: Lease, step: str) -> None:
        with self._write(lease=lease) as conn:
            conn.execute(
                sa.update(_undos)
                .where(_undos.c.rotation_id == lease.rotation_id, _undos.c.step == step)
                .values(done_at=_now())
            )
            self._event(conn, lease.rotation_id, f"undo:{step}", "completed")

    # -- the audit trail ------------------------------------------------------------------------------------------

    def record(self, rotation_id: str, step: str, status: str, **details: Any) -> None:
        """An audit record of its own (an approval refused, a run waiting), written at once, after what the rotation
        deferred: ids and names only, never values."""
        with self._write(rotation_id) as conn:
            self._event(conn, rotation_id, step, status, **details)

    def _event(
        self, conn: Connection, rotation_id: str, step: str, status: str, at: datetime | None = None, **details: Any
    ) -> None:
        conn.execute(
            _INSERT_EVENT,
            {"rotation_id": rotation_id, "at": at or _now(), "step": step, "status": status, "details": details},
        )

    def events(self, rotation_id: str) -> list[AuditEvent]:
        self._flush(rotation_id)
        with self._read() as conn:
            rows = conn.execute(
                sa.select(_events).where(_events.c.rotation_id == rotation_id).order_by(_events.c.id)
            ).mappings()
            return [AuditEvent(at=r["at"], step=r["step"], status=r["status"], details=r["details"]) for r in rows]
