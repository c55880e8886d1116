"""The process the crash harness kills: it runs one runbook and SIGKILLs itself at the chosen step boundary.

Started from a forkserver that has imported the runbooks already, so a trial does not pay Python's and Prefect's
start-up. The kill comes from inside, right after the journal call that marks the boundary, so it lands exactly
there: after a step's start is recorded (its undo with it) and before it acts, or after its completion is handed to
the journal (which writes it with the rotation's next transaction: killed there, it is lost, as in a real crash).
``paused`` kills once the flow run is Paused on the server, waiting for an approval; ``sleeping`` kills in the middle
of a grace wait. :func:`run_check` runs a flow that holds no rotation and dies after its n-th task call.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from uuid import UUID

from flows import (  # noqa: F401 - each registers its runbook, so a rotation can be found by id
    drill,
    fleet,
    jwt,
    postgres,
    posture,
    redis_password,
    restore,
    saml,
    saml_expiry,
    smtp,
)
from rotation import audit, journal, runbooks


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _when_paused(flow_run_id: str) -> None:
    from prefect import get_client

    with get_client(sync_client=True) as client:
        while True:
            state = client.read_flow_run(UUID(flow_run_id)).state
            if state is not None and state.is_paused():
                _die()
            time.sleep(0.05)


def run(spec: dict[str, Any]) -> None:
    """Run ``spec["runbook"]`` with ``spec["kwargs"]``; kill at ``spec["kill"]`` (step, phase) or never; append
    every boundary passed to ``spec["trace"]``."""
    os.environ.update(spec.get("environ", {}))
    kill = tuple(spec["kill"]) if spec.get("kill") else None
    trace = Path(spec["trace"])
    # What the run printed (Prefect's logs, a traceback) goes beside its trace, for the harness to quote on a surprise.
    with open(f"{trace}.log", "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)

    def passed(step: str, phase: str, kind: str = "") -> None:
        with trace.open("a") as out:
            out.write(json.dumps([step, phase, kind]) + "\n")
        if kill == (step, phase):
            _die()

    start_step, complete_step = journal.Journal.start_step, journal.Journal.complete_step
    record = audit.record

    def started(self: journal.Journal, lease: journal.Lease, name: str, kind: str, *args: Any, **kwargs: Any):
        entry = start_step(self, lease, name, kind, *args, **kwargs)
        if kind == "wait" and kill == (name, "sleeping"):
            threading.Timer(0.2, _die).start()
        passed(name, "started", kind)
        return entry

    def completed(self: journal.Journal, lease: journal.Lease, name: str, *args: Any, **kwargs: Any) -> None:
        complete_step(self, lease, name, *args, **kwargs)
        passed(name, "completed")

    def recorded(book: journal.Journal, rotation_id: str, secret: str, step: str, status: str, **details: Any):
        record(book, rotation_id, secret, step, status, **details)
        if status == "waiting" and kill == (step, "paused"):
            threading.Thread(target=_when_paused, args=(details["flow_run"],), daemon=True).start()

    journal.Journal.start_step = started
    journal.Journal.complete_step = completed
    audit.record = recorded
    flow = fleet.rotate_fleet if spec["runbook"] == "fleet" else None
    (flow or runbooks.named(spec["runbook"]).flow)(**spec["kwargs"])


#: The flows that change no secret and hold no rotation: they are killed after their n-th task call instead.
CHECKS = {
    "restore-drill": drill.restore_drill,
    "secret-posture": posture.secret_posture,
    "saml-expiry": saml_expiry.check_saml_certificate_expiry,
}


def run_check(spec: dict[str, Any]) -> None:
    """Run the flow ``CHECKS[spec["check"]]`` with ``spec["kwargs"]``; die right after its ``spec["kill_after"]``-th
    task call returns (0: never), and append the number of task calls made to ``spec["trace"]``."""
    from prefect.tasks import Task

    os.environ.update(spec.get("environ", {}))
    tempfile.tempdir = None  # the forkserver's, cached: read $TMPDIR again
    trace, calls = Path(spec["trace"]), 0
    with open(f"{trace}.log", "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    call = Task.__call__

    def counted(self: Task, *args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        result = call(self, *args, **kwargs)
        calls += 1
        trace.write_text(str(calls))
        if calls == spec["kill_after"]:
            _die()
        return result

    Task.__call__ = counted
    CHECKS[spec["check"]](**spec["kwargs"])
