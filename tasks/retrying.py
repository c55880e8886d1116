"""When a failed task is worth another attempt: only for errors that a later attempt can cure."""

from __future__ import annotations

from typing import Any

from stores.errors import StoreUnavailable

TRANSIENT: tuple[type[BaseException], ...] = (StoreUnavailable, ConnectionError, TimeoutError)


def is_transient(task: Any, task_run: Any, state: Any) -> bool:
    """A Prefect ``retry_condition_fn``: retry unreachable services, never bad input or refused credentials."""
    try:
        state.result()
    except TRANSIENT:
        return True
    except Exception:
        return False
    return False
