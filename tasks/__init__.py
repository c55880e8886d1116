"""Prefect tasks: each wraps one side effect (a store call, a change on a target, a restart, a verification).

Every task here is idempotent and retryable; it takes references (store URIs, version ids), never secret values,
and returns ids, names or fingerprints.
"""

from __future__ import annotations

import logging
from typing import Any

from prefect import get_run_logger
from prefect.exceptions import MissingContextError

from errors import is_transient


def retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    """A Prefect ``retry_condition_fn``: retry unreachable services, never bad input or refused credentials."""
    try:
        state.result()
    except BaseException as exc:
        return is_transient(exc)
    return False


def run_logger(name: str) -> logging.Logger | logging.LoggerAdapter:
    """The task run's logger (its lines reach the Prefect UI); ``name``'s module logger when a task is called as a
    plain function (``.fn``), outside a run."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(name)
