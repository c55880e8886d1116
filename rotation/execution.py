"""How a step's task runs: as a Prefect task run (the default: visible in the UI, retried by Prefect), or inline, as
a plain call with the same retries, when a whole rotation is one task of a fleet.

Inline steps cost the Prefect server nothing: a fleet of hundreds of rotations writes one task run per secret, not
one per step, so the server is not what limits how many rotate at once. The journal records every step the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect import Task
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_chain, wait_fixed, wait_none

from errors import is_transient
from tasks import retry_if_transient


def _wait(task: Task[..., Any]) -> Any:
    delays = task.retry_delay_seconds
    if isinstance(delays, int | float):
        return wait_fixed(delays)
    if isinstance(delays, list | tuple) and delays:
        return wait_chain(*(wait_fixed(d) for d in delays))
    return wait_none()


def call(fn: Callable[..., Any], *args: Any, inline: bool, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``: a task run, or with ``inline`` the task's function under the task's own retries
    (its count, its delays, and, for tasks that retry only transient failures, the same condition)."""
    if not inline or not isinstance(fn, Task):
        return fn(*args, **kwargs)
    condition = is_transient if fn.retry_condition_fn is retry_if_transient else (lambda _: True)
    retrying = Retrying(
        stop=stop_after_attempt((fn.retries or 0) + 1),
        wait=_wait(fn),
        retry=retry_if_exception(condition),
        reraise=True,
    )
    return retrying(fn.fn, *args, **kwargs)
