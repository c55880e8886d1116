"""Human approval: one waiting flow run of one rotation, at one named step, decided in the UI, the CLI or the API.

The run pauses with :class:`ApprovalDecision`, whose decision fields have no default: the server refuses an empty or
partial answer and the run stays paused. The answer carries the rotation id and the step it is meant for (filled in
by the form); an answer meant for another rotation or step, a blank name, or an approval by the person who started
the run (four eyes, names compared trimmed and case-folded) is refused: recorded, and the run pauses again with a
question that says why. ``--yes`` gives the decision up front (:class:`Preapproval`), so the run never pauses.

Approver names are declared by the person approving; who may approve at all is decided by who can reach the
Prefect API (turn API authentication on in production).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal
from uuid import UUID

import httpx
from prefect import get_client, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.exceptions import FlowPauseTimeout, NotPausedError
from prefect.flow_runs import pause_flow_run, resume_flow_run
from prefect.input import RunInput, keyset_from_base_key
from prefect.input.actions import read_flow_run_input
from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings
from prefect.states import Running
from prefect.utilities.urls import url_for
from pydantic import BaseModel, Field

from errors import BadInput, Refused, Rejected, Unreachable
from rotation import audit
from rotation.journal import Journal

#: Not blank: a name or reason of spaces decides nothing.
_NOT_BLANK = r"\S"


class ApprovalDecision(RunInput):
    """What an approver answers. ``decision``, ``approver`` and ``reason`` have no default."""

    decision: Literal["approve", "reject"] = Field(description="approve: go ahead; reject: the rotation is rolled back")
    approver: str = Field(pattern=_NOT_BLANK, max_length=200, description="who decides (your name)")
    reason: str = Field(pattern=_NOT_BLANK, max_length=2000, description="why; recorded in the audit trail")
    rotation_id: str = Field(description="the rotation this decision is for (filled in)")
    step: str = Field(description="the step this decision is for (filled in)")
    decision_id: str | None = Field(default=None, description="set by `rotate approve` to read back the verdict")


class Preapproval(BaseModel):
    """A decision given before the run starts (``--yes``): recorded at each approval, no pause."""

    approver: str = Field(pattern=_NOT_BLANK, max_length=200)
    reason: str = Field(default="approved in advance (--yes)", pattern=_NOT_BLANK, max_length=2000)


class ApprovalFacts(BaseModel):
    """What an approval step records: who decided, why, when and how. Never a value."""

    decision: Literal["approve", "skipped"]
    approver: str | None = None
    reason: str | None = None
    at: datetime
    via: str


class ApprovalRejected(Rejected):
    """The approver said no, or nobody answered in time."""


@dataclass(frozen=True)
class PendingApproval:
    """A run of this process waits for a decision (what a terminal answering for it needs)."""

    rotation_id: str
    step: str
    flow_run_id: str
    question: str


_listeners: list[Callable[[PendingApproval], None]] = []
_listeners_lock = threading.Lock()


@contextmanager
def watching(listener: Callable[[PendingApproval], None]) -> Iterator[None]:
    """Call ``listener`` (from the run's thread; it must not block) whenever a run of this process starts waiting.

    The CLI answers at the terminal this way, for the runs it started and no others.
    """
    with _listeners_lock:
        _listeners.append(listener)
    try:
        yield
    finally:
        with _listeners_lock:
            _listeners.remove(listener)


def _code(text: str) -> str:
    """``text`` as inline code in markdown (a name may hold any character)."""
    return "`" + text.replace("`", "'").replace("|", "\\|") + "`"


def same_person(a: str, b: str) -> bool:
    """The four-eyes comparison: names trimmed and case-folded."""
    return a.strip().casefold() == b.strip().casefold()


def pause_key(step: str, attempt: int) -> str:
    """A pause key Prefect accepts (lower-case letters, digits and dashes), one per step and attempt."""
    return re.sub(r"[^a-z0-9-]", "-", f"{step}-{attempt}".lower())


@dataclass
class ApprovalRequest:
    """One approval step of one rotation, as :meth:`rotation.context.Rotation.approve` asks it."""

    journal: Journal
    rotation_id: str
    secret: str
    step: str
    question: str
    flow_run_id: str
    started_by: str
    allow_self_approval: bool
    timeout_seconds: float
    poll_seconds: int
    preapproved: Preapproval | None
    superseded_runs: tuple[str, ...] = ()
    #: What the approver is shown beside the question (the pause's artifact).
    runbook: str = ""
    consumers: tuple[str, ...] = ()
    changes: str = "the rotation goes on to its next step"
    #: For a pause in which a person acts (stages a value): why an "approve" cannot be accepted yet, or None.
    not_ready: Callable[[], str | None] | None = None

    def decide(self) -> ApprovalFacts:
        """The decision: given up front, given to a run this one superseded, or waited for; refusals recorded."""
        if self.preapproved is not None:
            why = self._refusal(self.preapproved.approver)
            if why is None:
                return self._accepted(self.preapproved.approver, self.preapproved.reason, "given in advance (--yes)")
            self._refused(self.preapproved.approver, why, None)
        for old_run in self.superseded_runs:
            decision = self._given_to(old_run)
            if decision is not None:
                return self._judge_until_accepted(decision, f"given to flow run {old_run} before it stopped")
        return self._judge_until_accepted(None, "")

    def _judge_until_accepted(self, decision: ApprovalDecision | None, via: str) -> ApprovalFacts:
        deadline = time.monotonic() + self.timeout_seconds
        question, attempt = self.question, 0
        while True:
            if decision is not None:
                why = self._address_refusal(decision) or (
                    (self._refusal(decision.approver) or (self.not_ready() if self.not_ready else None))
                    if decision.decision == "approve"
                    else None
                )
                if why is None:
                    if decision.decision == "reject":
                        audit.record(
                            self.journal,
                            self.rotation_id,
                            self.secret,
                            self.step,
                            "rejected",
                            approver=decision.approver,
                            reason=decision.reason,
                            decision_id=decision.decision_id,
                        )
                        raise ApprovalRejected(f"{decision.approver} rejected {self.step!r}: {decision.reason}")
                    return self._accepted(decision.approver, decision.reason, via, decision.decision_id)
                self._refused(decision.approver, why, decision.decision_id)
                question = f"{self.question} (A decision by {decision.approver} was refused: {why}.)"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ApprovalRejected(f"nobody approved {self.step!r} within {self.timeout_seconds:.0f} s")
            attempt += 1
            decision, via = self._wait(question, attempt, remaining), "answered the paused run"

    def _wait(self, question: str, attempt: int, remaining: float) -> ApprovalDecision:
        key = pause_key(self.step, attempt)
        form = ApprovalDecision.with_initial_data(description=question, rotation_id=self.rotation_id, step=self.step)
        # Saved before the pause: Prefect saves it only after the run shows Paused, and refuses a decision sent in
        # between ("Run input schema not found").
        form.save(keyset_from_base_key(f"paused-{key}"))
        create_markdown_artifact(
            key=f"rotation-{self.rotation_id}-approval",
            markdown=self._artifact(question),
            description=f"approval wanted: {question}"[:500],
        )
        audit.record(
            self.journal,
            self.rotation_id,
            self.secret,
            self.step,
            "waiting",
            flow_run=self.flow_run_id,
            pause_key=key,
            question=question,
        )
        get_run_logger().info(
            "Waiting for approval at step %s: %s. %s may decide, with %s", self.step, question, self._who(), self._how()
        )
        pending = PendingApproval(self.rotation_id, self.step, self.flow_run_id, question)
        with _listeners_lock:
            listeners = list(_listeners)
        for listener in listeners:
            listener(pending)
        try:
            return pause_flow_run(
                wait_for_input=form, timeout=max(1, int(remaining)), poll_interval=self.poll_seconds, key=key
            )
        except FlowPauseTimeout:
            # The server keeps a timed-out run Paused, and would then end it Failed whatever it proposes: it runs
            # again (its rollback), and ends Rejected.
            with get_client(sync_client=True) as client:
                client.set_flow_run_state(UUID(self.flow_run_id), Running(), force=True)
            raise ApprovalRejected(f"nobody approved {self.step!r} within {self.timeout_seconds:.0f} s") from None

    def _who(self) -> str:
        if self.allow_self_approval:
            return "Anyone (self-approval is allowed)"
        return f"Anyone but {self.started_by}, who started the run (four eyes)"

    def _how(self) -> str:
        if self.not_ready:
            return f"`rotate stage {self.rotation_id}`"
        page = url_for("flow-run", obj_id=self.flow_run_id)
        return (
            f"the Prefect UI ({page or 'the flow run'}: Resume), "
            f"`rotate approve {self.rotation_id} --approver NAME --reason TEXT [--reject]`, or "
            f'POST /api/flow_runs/{self.flow_run_id}/resume with {{"run_input": {{"decision": "approve" or "reject", '
            f'"approver": ..., "reason": ..., "rotation_id": "{self.rotation_id}", "step": "{self.step}"}}}}'
        )

    def _artifact(self, question: str) -> str:
        """What the approver reads on the paused run: names, ids and the rules; never a value."""
        consumers = ", ".join(_code(c) for c in self.consumers) or "none"
        rows = [
            ("Runbook", _code(self.runbook)),
            ("Secret", _code(self.secret)),
            ("Step", _code(self.step)),
            ("Rotation", _code(self.rotation_id)),
            ("Consumers", consumers),
            ("Started by", _code(self.started_by)),
            ("Who may decide", self._who()),
        ]
        table = "\n".join(f"| {k} | {v} |" for k, v in rows)
        return (
            f"## Approval wanted\n\n{question}\n\n| | |\n|---|---|\n{table}\n\n"
            f"- **Approve**: {self.changes}.\n"
            "- **Reject**: the rotation is rolled back to where it began: CURRENT points at the previous version "
            "again, the staged value is discarded, what changed on the target is undone, and the consumers are "
            "restarted. The run ends *Rejected*.\n"
            "- Names are compared trimmed and case-folded; approver and reason must not be blank; a refused "
            "decision is recorded and the run asks again, saying why.\n\n"
            f"Decide with {self._how()}.\n"
        )

    def _given_to(self, flow_run_id: str) -> ApprovalDecision | None:
        """A decision someone gave to a run that was killed while it waited, before this run took over."""
        waits = [
            e
            for e in self.journal.events(self.rotation_id)
            if e.step == self.step and e.status == "waiting" and e.details.get("flow_run") == flow_run_id
        ]
        for wait in reversed(waits):
            answer = read_flow_run_input(f"paused-{wait.details['pause_key']}-response", flow_run_id=UUID(flow_run_id))
            if answer:
                return ApprovalDecision.model_validate(answer)
        return None

    def _address_refusal(self, decision: ApprovalDecision) -> str | None:
        if decision.rotation_id != self.rotation_id or decision.step != self.step:
            return (
                f"it was meant for step {decision.step!r} of rotation {decision.rotation_id}, and this run waits at "
                f"step {self.step!r} of rotation {self.rotation_id}"
            )
        return None

    def _refusal(self, approver: str) -> str | None:
        if same_person(approver, self.started_by) and not self.allow_self_approval:
            return f"{approver.strip()} started this run, and approving needs a second person (four eyes)"
        return None

    def _refused(self, approver: str, why: str, decision_id: str | None) -> None:
        get_run_logger().warning("Approval of %r by %s refused: %s", self.step, approver, why)
        audit.record(
            self.journal,
            self.rotation_id,
            self.secret,
            self.step,
            "refused",
            approver=approver,
            reason=why,
            decision_id=decision_id,
        )

    def _accepted(self, approver: str, reason: str, via: str, decision_id: str | None = None) -> ApprovalFacts:
        facts = ApprovalFacts(
            decision="approve", approver=approver.strip(), reason=reason, at=datetime.now(UTC), via=via
        )
        audit.record(
            self.journal,
            self.rotation_id,
            self.secret,
            self.step,
            "approved",
            approver=facts.approver,
            reason=reason,
            via=via,
            decision_id=decision_id,
        )
        return facts


def waiting_for(journal: Journal, rotation_id: str, flow_run_id: str | None) -> PendingApproval | None:
    """The approval run ``flow_run_id`` of the rotation waits for now, from the journal's trail (None: none)."""
    waiting: PendingApproval | None = None
    for event in journal.events(rotation_id):
        if event.status == "waiting" and event.details.get("flow_run") == flow_run_id:
            waiting = PendingApproval(rotation_id, event.step, flow_run_id, event.details.get("question", ""))
        elif waiting is not None and event.step == waiting.step and event.status != "refused":
            waiting = None  # decided, or the step went on
    return waiting


class NotWaitingForApproval(Refused):
    """The rotation or flow run named is not waiting for an approval."""


def give_decision(flow_run_id: str, decision: ApprovalDecision, settle_seconds: float = 60) -> None:
    """Answer a paused run's approval, as the UI's Resume button does; a refusal by the server is an error.

    The journal says a run waits a moment before the server shows it paused (and between a refused decision and
    the pause that asks again): a run that is not paused yet is given ``settle_seconds`` to get there. A busy
    Prefect server (SQLite, many runs at once) can take more than 10 s to record a pause, and answers a resume
    "busy" (503) again and again while other requests get through; Prefect's client would back off 2, 4 ... 32 s,
    past the run's own approval timeout, so the decision is sent again every quarter second instead, within the
    same ``settle_seconds``.
    """
    deadline = time.monotonic() + settle_seconds
    sent = False  # a resume the server may have taken although it answered with an error
    while True:
        try:
            with temporary_settings(updates={PREFECT_CLIENT_MAX_RETRIES: 0}):
                resume_flow_run(UUID(flow_run_id), run_input=decision.model_dump())
            return
        except NotPausedError:
            if sent:
                return  # it took the earlier one; the journal says what it made of it
            if time.monotonic() > deadline:
                raise NotWaitingForApproval(
                    f"flow run {flow_run_id} is not waiting for an approval; `rotate status` shows what is"
                ) from None
        except (httpx.HTTPStatusError, *_TRANSIENT) as exc:
            if isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code not in _BUSY:
                raise
            if time.monotonic() > deadline:
                raise Unreachable(
                    f"the Prefect server was too busy to take the decision for flow run {flow_run_id} within "
                    f"{settle_seconds:.0f} s ({type(exc).__name__}); give it again"
                ) from None
            sent = sent or exc.request.method == "POST"
        except RuntimeError as exc:
            raise BadInput(f"the Prefect server refused the decision for flow run {flow_run_id}: {exc}") from None
        time.sleep(0.25)


#: What a busy Prefect server answers (a database locked, a proxy in front of it), and the network errors of a
#: request it may or may not have taken: Prefect's client retries these too.
_BUSY = {429, 502, 503}
_TRANSIENT = (httpx.TimeoutException, httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)
