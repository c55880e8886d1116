"""The runbook core: ``with rotation(secret, options, consumers) as r:`` and the named steps every runbook is made of.

It takes the secret's lock (its canonical identity), owns the rotation by a lease renewed while the run lives, and
records every step in the journal by the name the runbook gives it: its start (with the undo it registers, in the
same transaction), its completion and the facts it returned. A resumed run walks the runbook again, returns the
recorded facts of every step that completed without acting, and acts only from the first one that did not. Any
failure before :meth:`Rotation.retire` runs the compensation stack; after it, failures are left for a resumed run
to carry forward.
"""

from __future__ import annotations

import getpass
import time
import typing
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Literal, TypeVar

from prefect import Task, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import deployment, flow_run
from pydantic import TypeAdapter
from pydantic_core import to_jsonable_python

from errors import Refused, Rejected, RotationError
from redaction import fingerprint, redact
from rotation import audit, flow_runs, runbooks
from rotation.approval import ApprovalFacts, ApprovalRequest
from rotation.compensation import Undo, roll_back
from rotation.execution import call
from rotation.journal import Journal, Lease, LeaseLost, RotationRecord, RotationState, StepRecord, UndoEntry
from rotation.lease import kept
from rotation.options import RotationOptions
from rotation.outcomes import RotationRolledBack
from stores import SecretStore, Stage, open_store
from stores.errors import VersionNotFound
from targets.consumers import Consumer
from tasks.consumers import restart_consumers
from tasks.secrets import discard_secret, promote_secret, prune_secret, revert_secret, stage_secret

T = TypeVar("T")
Gate = Literal["promote", "retire"]

#: What approving each gate lets happen, as the approver reads it.
_CHANGES: dict[Gate | None, str] = {
    "promote": "the staged value becomes CURRENT and the consumers are restarted to load it and verified; the "
    "old value stays valid (PREVIOUS) until it is retired",
    "retire": "the old credential is removed for good: the point of no return, after which the rotation can only "
    "go forward",
    None: "the rotation goes on to its next step",
}


#: Steps that change nothing before they are done: their start is written with their completion (see the journal).
_LOOKS = frozenset({"check", "verify", "approve", "approve-retire"})


class RunbookChanged(Refused):
    """The journal's steps do not match the runbook any more; the rotation can be rolled back, not resumed."""


class _Deferred(Exception):
    """Ends this run while a scheduled follow-up run waits out a grace period."""


@task(cache_policy=NO_CACHE)
def grace_wait(until: datetime) -> None:
    """Sleep until ``until`` (a short grace period; long ones are handed to a scheduled run)."""
    time.sleep(max(0.0, (until - datetime.now(UTC)).total_seconds()))


def _returns(fn: Any) -> Any:
    """The return annotation of a task or function, to give recorded facts back their type on resume."""
    target = fn.fn if isinstance(fn, Task) else fn
    try:
        return typing.get_type_hints(target).get("return")
    except (NameError, TypeError):
        return None


def _restored(facts: Any, returns: Any) -> Any:
    if returns is None or returns is type(None):
        return facts
    return TypeAdapter(returns).validate_python(facts)


class Rotation:
    """One rotation of one secret; every method is one named step of the written runbook."""

    def __init__(
        self,
        record: RotationRecord,
        store: SecretStore,
        journal: Journal,
        lease: Lease,
        options: RotationOptions,
        book: runbooks.Runbook,
    ) -> None:
        self.id = record.id
        self.secret = record.secret
        self.started_by = record.started_by
        self.consumers = [Consumer.model_validate(c) for c in record.consumers]
        self.versions_before = record.versions
        self.store = store
        self.journal = journal
        self.lease = lease
        self.options = options
        self.runbook = book
        self.step = "start"
        self._recorded = journal.steps(record.id) if options.resume else {}
        self._visited: set[str] = set()
        self._retired = record.retired_at is not None
        self._only_checks = not options.resume  # nothing but checks so far: a failure is bad input, not a rollback
        self.state = record.state
        self._inline = not options.steps_as_tasks

    # -- the mechanism every step goes through --------------------------------------------------------------------

    def _run(
        self,
        name: str,
        kind: str,
        act: Callable[[StepRecord], T],
        returns: Any = None,
        *,
        detail: dict[str, Any] | None = None,
        undo: UndoEntry | None = None,
        retire: bool = False,
        retire_when_done: bool = False,
    ) -> T:
        if name in self._visited:
            raise RuntimeError(f"runbook {self.runbook.name} names two steps {name!r}: step names must be unique")
        self._visited.add(name)
        self.step = name
        known = self._recorded.get(name)
        if known is not None and known.completed:
            return _restored(known.facts, returns)  # done before: never applied twice
        self._refuse_if_runbook_changed(name)
        self._only_checks = self._only_checks and kind == "check"
        started = self.journal.start_step(
            self.lease,
            name,
            kind,
            detail or {},
            undo=undo,
            retire=retire,
            write_ahead=kind not in _LOOKS,
        )
        # From the start of a retirement on, a failure is carried forward, never rolled back.
        self._retired = self._retired or retire
        result = act(started)
        self.journal.complete_step(self.lease, name, to_jsonable_python(result), retire=retire_when_done)
        self._retired = self._retired or retire_when_done
        return result

    def _refuse_if_runbook_changed(self, name: str) -> None:
        """At the first step that did not complete, every step the journal recorded must have been walked past."""
        unvisited = [n for n in self._recorded if n not in self._visited]
        if unvisited:
            raise RunbookChanged(
                f"rotation {self.id} was recorded by another version of runbook {self.runbook.name}: the journal "
                f"has step(s) {', '.join(unvisited)} that the runbook no longer has before step {name!r}. It cannot "
                f"be resumed safely; undo it with `rotate rollback {self.id}`"
            )

    def _undo(self, undo: Undo, *, deferred: bool = False, key: str | None = None) -> UndoEntry:
        if undo.task.name not in self.runbook.undos:
            raise RuntimeError(f"runbook {self.runbook.name} pushes undo {undo.task.name!r} it did not declare")
        return UndoEntry(undo.task.name, undo.kwargs, deferred, key)

    def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return call(fn, *args, inline=self._inline, **kwargs)

    # -- the steps ------------------------------------------------------------------------------------------------

    def check(self, name: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Look at the secret or the target without changing anything; what it returns is recorded."""
        return self._run(name, "check", lambda _: self._call(fn, *args, **kwargs), _returns(fn))

    def verify(self, name: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Check that what was changed works; any exception rolls the rotation back (before retire)."""
        return self._run(name, "verify", lambda _: self._call(fn, *args, **kwargs), _returns(fn))

    def apply(self, name: str, fn: Callable[..., T], *args: Any, undo: Undo | None = None, **kwargs: Any) -> T:
        """Change the target (a database, a cache...); ``undo`` is recorded first and must be idempotent."""
        entry = self._undo(undo) if undo is not None else None
        return self._run(name, "apply", lambda _: self._call(fn, *args, **kwargs), _returns(fn), undo=entry)

    def stage(self, name: str, build: Callable[..., str], **kwargs: Any) -> str:
        """Stage ``build(current value, **kwargs)`` as PENDING under the rotation id; returns its fingerprint.

        ``build`` is a pure function and ``kwargs`` non-secret: a resumed run keeps the value staged the first time.
        """
        return self._run(
            name,
            "stage",
            lambda _: self._call(stage_secret, self.secret, self.id, partial(build, **kwargs)),
            str,
            undo=self._undo(Undo(discard_secret)),
        )

    def approve(
        self, name: str, question: str, gate: Gate | None = None, *, person_retires: bool = False
    ) -> ApprovalFacts:
        """Wait for a human decision; a rejection or a timeout rolls the rotation back.

        ``gate`` says which of the options' approvals this is (``approve_promote``, ``approve_retire``): when the
        options do not ask for it, the step records that none was needed. ``person_retires``: the approver removes
        the old credential themselves once they approve (a password revoked in a provider's console), so the
        approval given is the point of no return, as a retirement's start is: a rollback would restore a credential
        that may be gone.
        """
        required = {"promote": self.options.approve_promote, "retire": self.options.approve_retire, None: True}[gate]

        def decide(_: StepRecord) -> ApprovalFacts:
            if not required:
                return ApprovalFacts(decision="skipped", at=datetime.now(UTC), via=f"options.approve_{gate}=false")
            return self._ask(name, question, changes=_CHANGES["retire" if person_retires else gate])

        kind = "approve-retire" if person_retires else "approve"  # not only a look: the world changes after it
        detail = {"question": question}
        return self._run(name, kind, decide, ApprovalFacts, detail=detail, retire_when_done=person_retires)

    def await_value(self, name: str, question: str, build: Callable[[str, str], str], base: str | None = None) -> str:
        """Pause until a person stages the secret's next value with ``rotate stage ROTATION_ID``: the value they
        enter (a prompt, standard input or a file; never a flow parameter) goes through ``build(base value,
        entered)`` and is staged as PENDING. ``base`` is a version id (default: CURRENT). Returns its fingerprint.

        ``build`` must be declared in the runbook's ``@runbook(inputs=[...])``. Rejecting the pause rolls back.
        """
        if build.__name__ not in self.runbook.inputs:
            raise RuntimeError(
                f"runbook {self.runbook.name} awaits a value through {build.__name__!r} it did not declare"
            )

        def not_staged() -> str | None:
            try:
                self.store.read_version(self.id)
            except VersionNotFound:
                return f"nothing is staged yet: run `rotate stage {self.id}` first"
            return None

        def wait_for_person(_: StepRecord) -> str:
            if not_staged() is not None:  # staged already when a resumed run gets here: nothing to ask
                self._ask(
                    name,
                    question,
                    allow_self_approval=True,
                    preapproved=None,
                    not_ready=not_staged,
                    changes=f"the value you staged with `rotate stage {self.id}` becomes PENDING, and the rotation "
                    "goes on with it",
                )
            return fingerprint(self.store.read_version(self.id))

        detail = {"question": question, "build": build.__name__, "base": base}
        return self._run(name, "await", wait_for_person, str, detail=detail, undo=self._undo(Undo(discard_secret)))

    def _ask(self, name: str, question: str, **overrides: Any) -> ApprovalFacts:
        if self._inline and (overrides.get("preapproved", self.options.preapproved) is None):
            raise Refused(
                f"step {name!r} of rotation {self.id} needs a person, and a rotation run as one task of a fleet cannot "
                "pause: approve the fleet in advance (--yes / options.preapproved) or rotate this secret on its own"
            )
        request = ApprovalRequest(
            journal=self.journal,
            rotation_id=self.id,
            secret=self.secret,
            step=name,
            question=f"{name} of {self.store.uri.name}: {question}",
            flow_run_id=str(flow_run.id),
            started_by=self.started_by,
            allow_self_approval=self.options.allow_self_approval,
            timeout_seconds=self.options.approval_timeout_seconds,
            poll_seconds=self.options.approval_poll_seconds,
            preapproved=self.options.preapproved,
            superseded_runs=self._superseded_runs(),
            runbook=self.runbook.name,
            consumers=tuple(f"{c.name} ({c.restart.kind} restart)" for c in self.consumers),
        )
        for key, value in overrides.items():
            setattr(request, key, value)
        return request.decide()

    def promote(self, name: str = "promote", *, ask: str | None = None) -> None:
        """Make the staged value CURRENT, after the promotion approval ``ask`` when the options want one.

        A rollback points CURRENT and PREVIOUS back where they were when the rotation began.
        """
        if ask is not None:
            self.approve(f"approve-{name}", ask, gate="promote")
        self._run(
            name,
            "promote",
            lambda _: self._call(promote_secret, self.secret, self.id),
            undo=self._undo(Undo(revert_secret, previous_version=self.versions_before.get("previous"))),
        )

    def restart(self, name: str) -> list[str]:
        """Restart the consumers; until retirement, a rollback restarts them once more, after the secret is reverted."""
        if not self.consumers:
            return []
        dumped = [c.model_dump(mode="json") for c in self.consumers]
        # Pushed once per rotation, to run after every other undo: the consumers load the reverted secret.
        undo = (
            None
            if self._retired
            else self._undo(Undo(restart_consumers, consumers=dumped), deferred=True, key="restart-consumers")
        )
        restart = partial(self._call, restart_consumers, self.secret, self.id, dumped)
        return self._run(name, "restart", lambda _: restart(), list[str], undo=undo)

    def wait(self, name: str, seconds: float, why: str = "grace period") -> None:
        """Wait out a grace period. Its due time is fixed when the step first starts: a resumed run only waits for
        what is left. A long wait in a deployment ends the run and schedules a follow-up run at the due time."""

        def wait_until_due(started: StepRecord) -> dict[str, str]:
            due = datetime.fromisoformat(started.detail["due"])
            remaining = (due - datetime.now(UTC)).total_seconds()
            if remaining > 0:
                create_markdown_artifact(
                    key=f"rotation-{self.id}-wait",
                    markdown=f"Rotation `{self.id}` of `{self.secret}` waits ({why}) until "
                    f"**{due:%Y-%m-%d %H:%M:%S} UTC**.",
                    description="grace period",
                )
                if remaining > self.options.max_sleep_seconds and deployment.id and not self._inline:
                    follow_up = flow_runs.schedule_follow_up(self.id, due)
                    audit.record(
                        self.journal,
                        self.id,
                        self.secret,
                        name,
                        "deferred",
                        due=due.isoformat(),
                        follow_up_flow_run=follow_up,
                    )
                    raise _Deferred(f"waiting until {due.isoformat()} in follow-up run {follow_up}")
                self._call(grace_wait, due)
            return {"due": due.isoformat()}

        due = datetime.now(UTC) + timedelta(seconds=seconds)
        self._run(name, "wait", wait_until_due, detail={"due": due.isoformat(), "why": why})

    def retire(self, name: str, fn: Callable[..., T], *args: Any, ask: str | None = None, **kwargs: Any) -> T:
        """Remove the old credential: the point of no return, recorded in the same transaction as the step's start.

        ``ask`` is the retirement approval, asked when the options want one.
        """
        if ask is not None:
            self.approve(f"approve-{name}", ask, gate="retire")
        return self._run(name, "retire", lambda _: self._call(fn, *args, **kwargs), _returns(fn), retire=True)

    # -- what callers see -----------------------------------------------------------------------------------------

    def facts(self, name: str) -> Any:
        """What step ``name`` returned (as recorded)."""
        return self.journal.steps(self.id)[name].facts

    def summary(self) -> dict[str, Any]:
        """What a caller may show: ids and states, never values."""
        return {"rotation_id": self.id, "secret": self.secret, "state": self.state}

    def _superseded_runs(self) -> tuple[str, ...]:
        runs = [e.details.get("flow_run") for e in reversed(self.journal.events(self.id)) if e.step == "rotation"]
        return tuple(dict.fromkeys(r for r in runs if r and r != str(flow_run.id)))


def _begin(
    journal: Journal,
    store: SecretStore,
    book: runbooks.Runbook,
    options: RotationOptions,
    consumers: Sequence[Consumer],
) -> tuple[RotationRecord, Lease]:
    if store.uri.name.endswith("*"):  # a selection of secrets (a restore): the lock keys on it, nothing to promote
        versions: dict[str, str | None] = {}
    else:
        description = store.describe()  # a missing secret or an unreachable store fails here, before any change
        versions = {
            "current": description.version_at(Stage.CURRENT),
            "previous": description.version_at(Stage.PREVIOUS),
        }
    lease = Lease.new(str(uuid.uuid4()), str(flow_run.id) if flow_run.id else None)
    record = journal.begin(
        secret=store.uri.display,
        runbook=book.name,
        started_by=(options.started_by or getpass.getuser()).strip(),
        parameters=to_jsonable_python(runbooks.parameters() or flow_run.parameters or {}),
        consumers=[c.model_dump(mode="json") for c in consumers],
        versions=versions,
        lease=lease,
    )
    return record, lease


def _take_over(
    journal: Journal, store: SecretStore, book: runbooks.Runbook, rotation_id: str, operator: str | None
) -> tuple[RotationRecord, Lease]:
    known = journal.get(rotation_id)
    if known.secret != store.uri.display or known.runbook != book.name:
        raise Refused(
            f"rotation {rotation_id} is a {known.runbook} rotation of {known.secret}, not a {book.name} rotation of "
            f"{store.uri.display}: resume it with `rotate resume {rotation_id}`"
        )
    lease = Lease.new(rotation_id, str(flow_run.id) if flow_run.id else None)
    taken = journal.take_over(rotation_id, lease, "resume", operator)
    flow_runs.mark_superseded(taken.superseded, f"its rotation was resumed by flow run {flow_run.id}")
    return taken.record, lease


@contextmanager
def rotation(
    secret: str, options: RotationOptions | None = None, consumers: Sequence[Consumer] = ()
) -> Iterator[Rotation]:
    """Own one rotation of ``secret`` for this flow run (a new one, or ``options.resume``), journal and audit it,
    and roll it back on any failure before retirement.

    ``secret`` may name a selection (a name ending in ``*``, as a restore of many secrets does): the lock keys on the
    selection, and there is no single secret to stage or promote.
    """
    options = options or RotationOptions()
    logger = get_run_logger()
    book = runbooks.current()
    store = open_store(secret)
    journal = Journal(options.journal)
    if options.resume:
        record, lease = _take_over(journal, store, book, options.resume, options.resumed_by)
    else:
        record, lease = _begin(journal, store, book, options, consumers)
    verb = "resumed" if options.resume else "started"
    audit.emit(record.id, record.secret, "rotation", verb, runbook=book.name)
    logger.info("Rotation %s of %s (%s) %s", record.id, record.secret, book.name, verb)
    with kept(journal, lease):
        r = Rotation(record, store, journal, lease, options, book)
        try:
            yield r
            if r._retired and not store.uri.name.endswith("*"):
                # What was retired must not linger in the store: destroy the versions no stage points to any more.
                prune = partial(r._call, prune_secret, r.secret, options.keep_versions)
                r._run("prune-versions", "prune", lambda _: prune(), list[str])
        except _Deferred as deferred:
            journal.end_run(lease, RotationState.WAITING, str(deferred))
            r.state = RotationState.WAITING
            logger.info("Rotation %s is %s", r.id, deferred)
            return
        except (LeaseLost, RunbookChanged):
            raise  # not this run's to undo: it no longer owns the rotation, or cannot walk it safely
        except Exception as exc:
            if r._only_checks:
                journal.forget(lease)  # its checks refused the input before anything changed
                raise
            reason = redact(f"step {r.step} failed: {type(exc).__name__}: {exc}")
            audit.record(journal, r.id, r.secret, r.step, "failed", error=reason)
            if r._retired:
                journal.end_run(lease, RotationState.FAILED, reason)
                logger.error("Rotation %s failed after its point of no return; resume it: rotate resume %s", r.id, r.id)
                raise
            # An explained failure is its message; a bug also needs its traceback, for whoever fixes it.
            logger.error("Rotation %s: %s; rolling back", r.id, reason, exc_info=not isinstance(exc, RotationError))
            roll_back(journal, lease, journal.get(r.id), reason, inline=r._inline)
            if isinstance(exc, Rejected):
                raise RotationRolledBack(f"rotation {r.id} of {r.secret} was rolled back: {exc}") from exc
            raise RotationRolledBack(f"rotation {r.id} of {r.secret} was rolled back: {reason}") from exc
        journal.end_run(lease, RotationState.COMPLETED)
        r.state = RotationState.COMPLETED
        audit.emit(r.id, r.secret, "rotation", "completed")
        logger.info("Rotation %s of %s completed", r.id, r.secret)
