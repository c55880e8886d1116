"""The runbook registry: every runbook by the name its rotations record, with the undo tasks it may push.

A runbook registers itself with :func:`runbook`. The journal names undo steps by task name, and a rollback in
another process finds the task object here (never a ``module:attribute`` string from a file): only the core's own
undos and those a runbook declared can ever run.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from prefect import Flow, Task
from prefect.context import FlowRunContext

from errors import BadInput
from rotation.outcomes import ending_in_named_states
from tasks.consumers import restart_consumers
from tasks.secrets import discard_secret, revert_secret

#: Undo tasks of the core itself: discard a staged value, revert a promotion, restart the consumers.
CORE_UNDOS: tuple[Task[..., Any], ...] = (discard_secret, revert_secret, restart_consumers)

F = TypeVar("F", bound=Flow[..., Any])


#: A function that turns a value a person enters (``rotate stage``) into the secret's next value.
Build = Callable[[str, str], str]


@dataclass(frozen=True)
class Runbook:
    name: str
    flow: Flow[..., Any]
    #: The runbook's own function, raising what it raises (a fleet runs it as one of its tasks).
    body: Callable[..., Any]
    undos: dict[str, Task[..., Any]] = field(default_factory=dict)
    inputs: dict[str, Build] = field(default_factory=dict)

    def input(self, build_name: str) -> Build:
        try:
            return self.inputs[build_name]
        except KeyError:
            raise BadInput(
                f"runbook {self.name} takes no value through {build_name!r}; the journal may have been edited, or "
                "the runbook changed since the rotation began"
            ) from None

    def undo(self, task_name: str) -> Task[..., Any]:
        try:
            return self.undos[task_name]
        except KeyError:
            raise BadInput(
                f"the journal names undo step {task_name!r}, which runbook {self.name} does not declare; "
                "the journal may have been edited, or the runbook changed since the rotation began"
            ) from None


_by_name: dict[str, Runbook] = {}
_by_flow: dict[str, Runbook] = {}


def runbook(name: str, *, undos: Iterable[Task[..., Any]] = (), inputs: Iterable[Build] = ()) -> Callable[[F], F]:
    """Register a runbook flow under ``name`` with the undo tasks it may push (beyond the core's own) and the
    functions that build its secret's next value from what a person enters (``Rotation.await_value``).

    The flow's run ends in a state named for its outcome (Rejected, RolledBack; see :mod:`rotation.outcomes`).
    """

    def register(flow: F) -> F:
        body = flow.fn
        ending_in_named_states(flow)
        entry = Runbook(name, flow, body, {t.name: t for t in (*CORE_UNDOS, *undos)}, {b.__name__: b for b in inputs})
        _by_name[name] = _by_flow[flow.name] = entry
        return flow

    return register


def named(name: str) -> Runbook:
    """The runbook that records itself as ``name``."""
    if name not in _by_name:
        known = ", ".join(sorted(_by_name)) or "none"
        raise BadInput(f"unknown runbook {name!r}; known runbooks: {known}")
    return _by_name[name]


_running: contextvars.ContextVar[tuple[Runbook, dict[str, Any]] | None] = contextvars.ContextVar(
    "running_runbook", default=None
)


@contextmanager
def running(book: Runbook, parameters: dict[str, Any]) -> Iterator[None]:
    """Run ``book``'s body outside its own flow run (one task of a fleet): this is the runbook, these its
    parameters, for the journal to record."""
    token = _running.set((book, parameters))
    try:
        yield
    finally:
        _running.reset(token)


def parameters() -> dict[str, Any] | None:
    """The parameters of a runbook run by :func:`running`, or None inside its own flow run."""
    entry = _running.get()
    return entry[1] if entry else None


def current() -> Runbook:
    """The runbook in progress: the one :func:`running` names, else the flow run's."""
    if (entry := _running.get()) is not None:
        return entry[0]
    context = FlowRunContext.get()
    flow_name = context.flow.name if context and context.flow else None
    if flow_name not in _by_flow:
        raise RuntimeError(
            f"flow {flow_name!r} is not a registered runbook: decorate it with @runbook(NAME, undos=[...])"
        )
    return _by_flow[flow_name]


def all_runbooks() -> list[Runbook]:
    return sorted(_by_name.values(), key=lambda r: r.name)
