"""The runbook core: ``with rotation(secret, runbook, options) as r:`` and the steps every runbook is made of.

It takes the secret's lock, keeps the rotation's state in the journal, records every step, and keeps an explicit
compensation stack: each step that changes something registers its undo *before* it runs (so a crash between the
change and the record cannot lose it). Any failure before :meth:`Rotation.retire` runs the undos in reverse order,
then restarts consumers; after it, failures are left for a resumed run to carry forward.
"""

from __future__ import annotations

import getpass
import importlib
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from prefect import get_client, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import ObjectNotFound
from prefect.runtime import deployment, flow_run
from prefect.states import Crashed
from pydantic import BaseModel, Field
from pydantic_core import to_jsonable_python

from errors import RotationError
from redaction import redact
from rotation.approval import request_approval
from rotation.audit import audit
from rotation.journal import Journal, RotationRecord, RotationState
from rotation.scheduling import schedule_resume
from stores import SecretStore, SecretURI, Stage, open_store
from stores.errors import StoreError
from targets.consumers import Consumer
from tasks.consumers import restart_consumers
from tasks.secrets import promote_secret, stage_secret


class RotationOptions(BaseModel):
    """How a rotation runs: approvals, waiting, resuming. The same for every runbook."""

    resume: str | None = Field(default=None, description="Resume this rotation id instead of starting a new one.")
    started_by: str | None = Field(default=None, description="Who starts the run (default: the OS user).")
    approve_promote: bool = Field(default=True, description="Ask a human before the new credential goes live.")
    approve_retire: bool = Field(default=False, description="Ask a human before the old credential is removed.")
    approval_timeout_seconds: float = Field(default=3600, gt=0)
    allow_self_approval: bool = Field(default=False, description="Let the person who started the run approve it.")
    approval_poll_seconds: int = Field(default=2, ge=1, le=60)
    max_sleep_seconds: float = Field(
        default=900, ge=0, description="Longer grace periods are handed to a scheduled follow-up run when deployed."
    )
    journal: str | None = Field(default=None, description="Rotation journal file (default: $ROTATE_JOURNAL).")


class Undo(BaseModel):
    """A compensation step: a task in ``tasks/`` named ``module:attribute`` and its non-secret arguments."""

    task: str
    kwargs: dict[str, Any] = {}


class RotationRolledBack(RotationError):
    """A rotation failed before its point of no return and was rolled back to the previous working state."""


class RotationRefused(StoreError):
    """A resume or rollback that does not fit the rotation's state (finished, retired, running elsewhere)."""


class RollbackFailed(RotationError):
    """An undo step failed; the rotation keeps its lock until ``rotate rollback`` succeeds."""


class _Deferred(Exception):
    """Raised inside the rotation block to end this run while a scheduled follow-up run waits out a grace period."""


def _undo_task(path: str) -> Callable[..., Any]:
    module, _, attribute = path.partition(":")
    if not module.startswith("tasks."):
        raise RollbackFailed(f"undo step {path!r} is not a task of this project; the journal may be damaged")
    return getattr(importlib.import_module(module), attribute)


def roll_back(journal: Journal, rotation_id: str, reason: str) -> None:
    """Run a rotation's pending undo steps, newest first, then the deferred ones (consumer restarts).

    Safe to call again after a failure or a crash: undo steps that finished are not run twice, and every undo is
    itself idempotent.
    """
    record = journal.get(rotation_id)
    if record.retired_at is not None:
        raise RotationRefused(
            f"rotation {rotation_id} of {record.secret} passed its point of no return at "
            f"{record.retired_at:%Y-%m-%d %H:%M:%S} UTC (the old credential was retired); "
            f"it can only go forward: `rotate resume {rotation_id}`"
        )
    if record.state.finished:
        raise RotationRefused(f"rotation {rotation_id} of {record.secret} is already {record.state}; nothing to undo")
    for undo in journal.undos(rotation_id):
        if undo.done:
            continue
        audit(journal, rotation_id, record.secret, f"undo:{undo.key}", "started", task=undo.task)
        try:
            _undo_task(undo.task)(**undo.kwargs)
        except Exception as exc:
            why = redact(f"undo {undo.task} failed: {type(exc).__name__}: {exc}")
            journal.set_state(rotation_id, RotationState.ROLLBACK_FAILED, why)
            audit(journal, rotation_id, record.secret, f"undo:{undo.key}", "failed", error=why)
            raise RollbackFailed(
                f"rollback of rotation {rotation_id} stopped: {why}. Fix the cause and run "
                f"`rotate rollback {rotation_id}` again; the steps already undone will not run twice."
            ) from exc
        journal.mark_undone(rotation_id, undo.key)
        audit(journal, rotation_id, record.secret, f"undo:{undo.key}", "completed", task=undo.task)
    journal.set_state(rotation_id, RotationState.ROLLED_BACK, reason)
    audit(journal, rotation_id, record.secret, "rotation", "rolled-back", reason=reason)


@task(cache_policy=NO_CACHE)
def grace_wait(until: datetime) -> None:
    """Sleep until ``until`` (a short grace period; long ones are handed to a scheduled run)."""
    time.sleep(max(0.0, (until - datetime.now(UTC)).total_seconds()))


class Rotation:
    """One rotation of one secret; every method is one step of the written runbook."""

    def __init__(self, record: RotationRecord, store: SecretStore, journal: Journal, options: RotationOptions):
        self.id = record.id
        self.secret = record.secret
        self.started_by = record.started_by
        self.store = store
        self.journal = journal
        self.options = options
        self.step = "plan"
        self._count = 0

    def _next(self, kind: str) -> str:
        # Keys depend only on the order of steps, which the runbook's code fixes, so a resumed run finds its marks.
        self._count += 1
        self.step = f"{self._count}:{kind}"
        return self.step

    def _audit(self, status: str, **details: Any) -> None:
        audit(self.journal, self.id, self.secret, self.step, status, **details)

    def _run(self, kind: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        self._next(kind)
        name = getattr(fn, "name", getattr(fn, "__name__", kind))
        self._audit("started", task=name)
        result = fn(*args, **kwargs)
        self._audit("completed", task=name)
        return result

    def _push(self, undo: Undo, deferred: bool = False, key: str | None = None) -> None:
        self.journal.push_undo(self.id, key or self.step, undo.task, undo.kwargs, deferred)

    def plan(self, **facts: Any) -> dict[str, Any]:
        """Record what the plan found (user names, versions; never values); a resumed run gets the first record."""
        self._next("plan")
        recorded = self.journal.record_facts(self.id, to_jsonable_python(facts))
        self._audit("completed", **recorded)
        return recorded

    def stage(self, build: Callable[[str], str]) -> str:
        """Stage ``build(current value)`` as PENDING (once per rotation); returns its fingerprint."""
        self._next("stage")
        self._push(Undo(task="tasks.secrets:discard_secret", kwargs={"secret": self.secret, "rotation_id": self.id}))
        self._audit("started")
        fp = stage_secret(self.secret, self.id, build)
        self._audit("completed", fingerprint=fp)
        return fp

    def apply(self, fn: Any, *args: Any, undo: Undo | None = None, **kwargs: Any) -> Any:
        """Change the target (a database, a cache...); ``undo`` is recorded first and must be idempotent."""
        if undo is not None:
            self._push(undo, key=f"{self._count + 1}:apply")
        return self._run("apply", fn, *args, **kwargs)

    def verify(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Check that what was changed works; any exception rolls the rotation back (before retire)."""
        return self._run("verify", fn, *args, **kwargs)

    def approve(self, question: str, required: bool = True) -> None:
        """Pause until a human approves; a rejection or a timeout rolls the rotation back."""
        key = self._next("approve")
        if not required:
            self._audit("skipped", question=question)
            return
        recorded = self.journal.mark(self.id, key)
        if recorded:
            self._audit("recorded", **recorded)
            return
        self._audit("waiting", question=question)
        decision = request_approval(
            question,
            key=f"{self.id}-{key}",
            started_by=self.started_by,
            timeout_seconds=self.options.approval_timeout_seconds,
            allow_self_approval=self.options.allow_self_approval,
            poll_seconds=self.options.approval_poll_seconds,
        )
        answer = {"approver": decision.approver, "reason": decision.reason, "at": datetime.now(UTC).isoformat()}
        self.journal.mark(self.id, key, answer)
        self._audit("approved", **answer)

    @property
    def versions_before(self) -> dict[str, str | None]:
        """The versions CURRENT and PREVIOUS pointed at when the rotation began."""
        return self.journal.mark(self.id, "versions")

    def promote(self) -> None:
        """Make the staged value CURRENT; on rollback CURRENT and PREVIOUS point back where they were."""
        previous = self.versions_before.get("previous")
        self._next("promote")
        self._push(
            Undo(
                task="tasks.secrets:revert_secret",
                kwargs={"secret": self.secret, "rotation_id": self.id, "previous_version": previous},
            )
        )
        self._audit("started")
        promote_secret(self.secret, self.id)
        self._audit("completed")

    def restart(self, consumers: list[Consumer]) -> None:
        """Restart the consumers; a rollback restarts them once more, after the secret was reverted."""
        if not consumers:
            return
        if not self.journal.get(self.id).retired_at:
            dumped = [c.model_dump(mode="json") for c in consumers]
            self._push(
                Undo(task="tasks.consumers:restart_consumers", kwargs={"consumers": dumped}),
                deferred=True,
                key="restart-consumers",
            )
        self._run("restart", restart_consumers, consumers)

    def wait(self, seconds: float, why: str = "grace period") -> None:
        """Wait out a grace period. Its due time is durable: a resumed run only waits for what is left."""
        key = self._next("wait")
        due = self.journal.due_time(self.id, key, seconds)
        remaining = (due - datetime.now(UTC)).total_seconds()
        if remaining <= 0:
            self._audit("completed", due=due.isoformat())
            return
        self._audit("waiting", due=due.isoformat(), why=why)
        create_markdown_artifact(
            key=f"rotation-{self.id}-wait",
            markdown=f"Rotation `{self.id}` of `{self.secret}` waits ({why}) until **{due:%Y-%m-%d %H:%M:%S} UTC**.",
            description="grace period",
        )
        if remaining > self.options.max_sleep_seconds and deployment.id:
            follow_up = schedule_resume(self.id, due)
            self._audit("deferred", due=due.isoformat(), follow_up_flow_run=follow_up)
            raise _Deferred(f"waiting until {due.isoformat()} in follow-up run {follow_up}")
        grace_wait(due)
        self._audit("completed", due=due.isoformat())

    def retire(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Remove the old credential: the point of no return, recorded before it happens."""
        self.journal.mark_retired(self.id)
        return self._run("retire", fn, *args, **kwargs)

    def summary(self) -> dict[str, Any]:
        """What a caller may show: ids, states and facts, never values."""
        record = self.journal.get(self.id)
        return {"rotation_id": self.id, "secret": self.secret, "state": record.state, "facts": record.facts}


def _owner_alive(owner: str | None) -> bool:
    if not owner:
        return False
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _resume(journal: Journal, options: RotationOptions, secret: str) -> RotationRecord:
    record = journal.get(options.resume or "")
    if record.secret != secret:
        raise RotationRefused(f"rotation {record.id} rotates {record.secret}, not {secret}; resume it with that secret")
    if record.state.finished:
        raise RotationRefused(f"rotation {record.id} of {secret} is already {record.state}; start a new one instead")
    if record.state is RotationState.ROLLBACK_FAILED:
        raise RotationRefused(
            f"rotation {record.id} of {secret} was being rolled back; finish that first: `rotate rollback {record.id}`"
        )
    if _owner_alive(record.owner):
        raise RotationRefused(
            f"rotation {record.id} of {secret} is still being run by process {record.owner}; wait for it or stop it"
        )
    return record


def _close_stale_run(stale_id: str | None) -> None:
    """Mark the run a resumed rotation replaces as Crashed.

    A run killed without warning stays Running or Paused on the server forever; left so, the UI would still offer
    its approval. It is only called once the owner process is known to be gone.
    """
    if not stale_id or stale_id == str(flow_run.id):
        return
    with get_client(sync_client=True) as client:
        try:
            stale = client.read_flow_run(UUID(stale_id))
        except ObjectNotFound:
            return
        if stale.state is not None and not stale.state.is_final():
            message = f"superseded: its rotation was resumed by flow run {flow_run.id}"
            client.set_flow_run_state(stale.id, Crashed(message=message), force=True)


@contextmanager
def rotation(secret: str, runbook: str, options: RotationOptions) -> Iterator[Rotation]:
    """Lock ``secret``, journal and audit a rotation, and roll it back on any failure before retirement."""
    logger = get_run_logger()
    uri = SecretURI.parse(secret).display
    store = open_store(uri)
    journal = Journal(options.journal)
    if options.resume:
        record = _resume(journal, options, uri)
        _close_stale_run(record.flow_run_id)
    else:
        description = store.describe()  # a missing secret or an unreachable store fails here, before any change
        parameters = to_jsonable_python(flow_run.parameters or {})
        versions = {
            "current": description.version_at(Stage.CURRENT),
            "previous": description.version_at(Stage.PREVIOUS),
        }
        record = journal.begin(
            uri, runbook, options.started_by or getpass.getuser(), parameters, marks={"versions": versions}
        )
    record = journal.claim(record.id, flow_run.id)
    journal.set_state(record.id, RotationState.RUNNING)
    r = Rotation(record, store, journal, options)
    audit(journal, r.id, uri, "rotation", "resumed" if options.resume else "started", runbook=runbook)
    logger.info("Rotation %s of %s (%s) %s", r.id, uri, runbook, "resumed" if options.resume else "started")
    try:
        yield r
    except _Deferred as deferred:
        journal.set_state(r.id, RotationState.WAITING, str(deferred))
        logger.info("Rotation %s is %s", r.id, deferred)
        return
    except Exception as exc:
        reason = redact(f"step {r.step} failed: {type(exc).__name__}: {exc}")
        audit(journal, r.id, uri, r.step, "failed", error=reason)
        if journal.get(r.id).retired_at is not None:
            journal.set_state(r.id, RotationState.FAILED, reason)
            logger.error("Rotation %s failed after its point of no return; resume it: rotate resume %s", r.id, r.id)
            raise
        logger.error("Rotation %s: %s; rolling back", r.id, reason)
        roll_back(journal, r.id, reason)
        raise RotationRolledBack(f"rotation {r.id} of {uri} was rolled back: {reason}") from exc
    journal.set_state(r.id, RotationState.COMPLETED)
    audit(journal, r.id, uri, "rotation", "completed")
    logger.info("Rotation %s of %s completed", r.id, uri)
