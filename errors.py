"""The one error tree: every failure a person running a rotation can act on.

A message names what was wrong and what to do, and never holds a secret value; the command line prints it as one
line. Each layer raises the condition that fits (stores map their SDKs' errors onto these once, targets map their
drivers' errors), so callers decide by condition, never by the layer that raised it:

    RotationError
    ├── BadInput            a value, a URI, a file or an option that cannot work; nothing was changed
    ├── NotFound            a secret, a version, a user, a rotation that does not exist
    ├── PermissionDenied    the credentials in use may not do what was asked
    ├── Conflict            someone else changed it first, or holds it
    ├── Unreachable         a server did not answer; the only condition a retry can cure
    ├── CheckFailed         a verification did not see what the runbook expects
    ├── Refused             the rotation's state does not allow the request (in progress, finished, owned)
    └── Rejected            an approver said no, or nobody answered in time

This module imports nothing of the project, so every layer may use it.
"""

from __future__ import annotations


class RotationError(Exception):
    """A failure explained in its message: bad input, a refused credential, a failed check, a rejection."""


class BadInput(RotationError):
    """Input that cannot work; the message names it and says what to give instead.

    Not a ``ValueError``: pydantic passes it through a validator unchanged instead of wrapping it in a
    ``ValidationError`` whose text would quote the input.
    """


class NotFound(RotationError):
    """The thing named does not exist."""


class PermissionDenied(RotationError):
    """The credentials in use may not do this."""


class Conflict(RotationError):
    """A concurrent writer changed it first, or another rotation holds it."""


class Unreachable(RotationError, ConnectionError):
    """A server could not be reached or answered with a transient error; worth another attempt."""


class CheckFailed(RotationError):
    """A verification failed: a credential, a consumer or a target does not behave as the runbook expects."""


class Refused(RotationError):
    """The request does not fit the rotation's state: it is finished, retired, or owned by a live run."""


class Rejected(RotationError):
    """An approver rejected a step, or nobody decided before the approval timed out."""


TRANSIENT: tuple[type[BaseException], ...] = (Unreachable, ConnectionError, TimeoutError)


def is_transient(exc: BaseException) -> bool:
    """Whether another attempt may succeed: unreachable servers and timeouts, never bad input or a refusal."""
    return isinstance(exc, TRANSIENT)
