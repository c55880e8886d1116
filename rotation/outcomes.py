"""How a rotation's flow run ends, as a person reads it in the Prefect UI and an automation matches it.

A runbook's body raises, as any Python function does; :func:`ending_in_named_states` (applied by ``@runbook``) turns
what it raised into the run's final state: a rejection is a Cancelled state named ``Rejected``, a rollback before
the point of no return a Failed state named ``RolledBack``, any other explained failure (:class:`RotationError`)
a plain Failed state; each with a one-line message and no traceback in the run's logs. A bug keeps Prefect's own
Failed state and traceback. A caller of the flow still gets the exception raised, as before.

Automations match the states by name: the Prefect events ``prefect.flow-run.Rejected``,
``prefect.flow-run.RolledBack`` and ``prefect.flow-run.Failed``.
"""

from __future__ import annotations

import functools
import inspect
import typing
from typing import Any

from prefect import Flow
from prefect.states import Cancelled, Failed, State

from errors import Rejected, RotationError

REJECTED = "Rejected"
ROLLED_BACK = "RolledBack"


class RotationRolledBack(RotationError):
    """A rotation failed before its point of no return and was rolled back to the previous working state."""


def one_line(text: str) -> str:
    return " ".join(text.split())


def final_state(exc: BaseException) -> State | None:
    """The state a run that raised ``exc`` ends in; None for a bug (Prefect's Failed state with its traceback)."""
    if not isinstance(exc, RotationError):
        return None
    message = one_line(str(exc))
    if isinstance(exc, RotationRolledBack):
        if isinstance(exc.__cause__, Rejected):
            return Cancelled(name=REJECTED, message=message, data=exc)
        return Failed(name=ROLLED_BACK, message=message, data=exc)
    return Failed(message=message, data=exc)


def ending_in_named_states(flow: Flow[..., Any]) -> Flow[..., Any]:
    """Make ``flow`` end in the state :func:`final_state` names for what its body raised."""
    body = flow.fn

    @functools.wraps(body)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return body(*args, **kwargs)
        except RotationError as exc:
            return final_state(exc)

    # Prefect validates parameters against the function's annotations, which a runbook module may write as strings
    # (``from __future__ import annotations``) naming its own classes: give the wrapper them resolved, in the
    # runbook module's namespace (the wrapper's is this one).
    try:
        run.__signature__ = inspect.signature(body, eval_str=True)  # type: ignore[attr-defined]
        run.__annotations__ = typing.get_type_hints(body, include_extras=True)
    except NameError as exc:
        raise TypeError(
            f"runbook {body.__qualname__}: the annotation {exc.name!r} of its parameters or result must be "
            "importable when the runbook is defined (not only under TYPE_CHECKING)"
        ) from exc
    flow.fn = run
    return flow
