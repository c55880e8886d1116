"""Restarting the services that read a secret, so that they load its current value."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from targets.consumers import Consumer, ConsumerRestartFailed, restart


@task(cache_policy=NO_CACHE, retries=1, retry_delay_seconds=3)
def restart_consumers(secret: str, rotation_id: str, consumers: list[Consumer] | list[dict]) -> list[str]:
    """Restart every consumer of ``secret`` in order, so they load its current value; returns their names.

    Accepts models or their JSON form (an undo from the journal).

    One that fails does not stop the others (a rollback must still reload the ones that can); the failures are
    raised together at the end.
    """
    consumers = [Consumer.model_validate(c) for c in consumers]
    failures: list[str] = []
    for consumer in consumers:
        try:
            restart(consumer)
        except ConsumerRestartFailed as exc:
            failures.append(str(exc))
    if failures:
        raise ConsumerRestartFailed("; ".join(failures))
    return [c.name for c in consumers]
