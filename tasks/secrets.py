"""Steps on the secret store itself: stage a new value, promote it, revert it, discard it, prune old versions.

Each task opens the store from its URI, so a task run never carries a secret value in its parameters, and returns
a version id or a fingerprint, never the value.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from prefect import task
from prefect.cache_policies import NO_CACHE

from redaction import fingerprint
from stores import open_store
from tasks import retry_if_transient

_RETRY = {"retries": 3, "retry_delay_seconds": [1, 5, 15], "retry_condition_fn": retry_if_transient}


@task(cache_policy=NO_CACHE, **_RETRY)
def stage_secret(secret: str, rotation_id: str, build: Callable[[str], str]) -> str:
    """Stage ``build(current value)`` as PENDING under ``rotation_id``, unless this rotation already staged one.

    Returns the staged value's fingerprint. On a resumed run the value staged the first time is kept: ``build`` is
    not called again, so a random value is generated exactly once per rotation.
    """
    store = open_store(secret)
    # The store registers every value it reads or writes for log redaction; a remote one answers from memory here.
    return fingerprint(store.read_version(store.stage_from_current(rotation_id, build)))


@task(cache_policy=NO_CACHE, **_RETRY)
def promote_secret(secret: str, rotation_id: str) -> None:
    """Make the staged version CURRENT; the old CURRENT becomes PREVIOUS."""
    open_store(secret).promote(rotation_id)


@task(cache_policy=NO_CACHE, **_RETRY)
def revert_secret(secret: str, rotation_id: str, previous_version: str | None) -> None:
    """Undo a promotion: CURRENT and PREVIOUS point where they pointed before the rotation."""
    open_store(secret).revert(rotation_id, previous_version)


@task(cache_policy=NO_CACHE, **_RETRY)
def discard_secret(secret: str, rotation_id: str) -> None:
    """Remove the staged version of a rotation that will not be promoted."""
    open_store(secret).discard(rotation_id)


@task(cache_policy=NO_CACHE, **_RETRY)
def prune_secret(secret: str, keep: int = 0) -> list[str]:
    """After a rotation's point of no return: destroy the versions no stage points to but the newest ``keep``."""
    return open_store(secret).prune(keep)


def derived_version_id(rotation_id: str, step: str) -> str:
    """The version id of a later value of the same rotation (a second promotion, a third...): derived from the
    rotation id and the step, so a resumed step finds the version it staged."""
    return str(uuid.uuid5(uuid.UUID(rotation_id), step))


def stage_and_promote(secret: str, version_id: str, build: Callable[[str], str]) -> str:
    """Stage ``build(CURRENT)`` as ``version_id`` and promote it; idempotent. Returns ``version_id``."""
    stage_secret.fn(secret, version_id, build)
    promote_secret.fn(secret, version_id)
    return version_id


def unpromote(secret: str, version_id: str, previous_version: str | None) -> None:
    """Undo :func:`stage_and_promote`: the version before ``version_id`` is CURRENT again, ``previous_version``
    PREVIOUS, and ``version_id`` is gone; nothing to undo: no change."""
    revert_secret.fn(secret, version_id, previous_version)
    discard_secret.fn(secret, version_id)
