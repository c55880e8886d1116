"""Restarting the services that read a secret, so that they load its current value.

A consumer is restarted by a command, by an HTTP reload call, as a Kubernetes rollout, or not at all (it re-reads
the secret by itself). Each kind is a pydantic model; ``Consumer.restart`` picks one by its ``kind`` field.
"""

from __future__ import annotations

import subprocess
from typing import Annotated, Literal

import httpx
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from tasks.errors import RotationError


class ConsumerRestartFailed(RotationError):
    """A consumer did not come back after its restart; treated as a failed verification."""


class CommandRestart(BaseModel):
    """Run a command (``systemctl restart auth``, ``supervisorctl restart auth``...); exit status 0 means done."""

    kind: Literal["command"] = "command"
    command: list[str] = Field(min_length=1)
    timeout_seconds: float = 120


class HttpReload(BaseModel):
    """Call the service's reload endpoint; a 2xx answer means it has loaded the current secret."""

    kind: Literal["http"] = "http"
    url: str
    method: Literal["POST", "PUT", "GET"] = "POST"
    timeout_seconds: float = 30
    verify_tls: bool = True


class KubernetesRollout(BaseModel):
    """Restart a Deployment or StatefulSet as ``kubectl rollout restart`` does and wait for the rollout."""

    kind: Literal["k8s"] = "k8s"
    namespace: str
    workload: Literal["Deployment", "StatefulSet"] = "Deployment"
    name: str
    context: str | None = Field(default=None, description="kubeconfig context (default: in-cluster or current)")
    timeout_seconds: float = 300


class NoRestart(BaseModel):
    """The consumer re-reads the secret by itself (for example on every connection)."""

    kind: Literal["none"] = "none"


Restart = Annotated[CommandRestart | HttpReload | KubernetesRollout | NoRestart, Field(discriminator="kind")]


class Consumer(BaseModel):
    """A service that reads the secret: how to restart it, and where to check it still accepts credentials."""

    name: str
    restart: Restart = NoRestart()
    verify_url: str | None = Field(
        default=None, description="An endpoint the runbook's verification calls with a credential (a JWT, say)."
    )


def _restart(consumer: Consumer) -> None:
    how = consumer.restart
    if isinstance(how, CommandRestart):
        try:
            done = subprocess.run(how.command, capture_output=True, timeout=how.timeout_seconds, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ConsumerRestartFailed(f"restarting {consumer.name}: {type(exc).__name__}: {exc}") from None
        if done.returncode != 0:
            raise ConsumerRestartFailed(
                f"restarting {consumer.name}: {how.command[0]} exited with status {done.returncode}"
            )
    elif isinstance(how, HttpReload):
        try:
            response = httpx.request(how.method, how.url, timeout=how.timeout_seconds, verify=how.verify_tls)
        except httpx.HTTPError as exc:
            raise ConsumerRestartFailed(f"reloading {consumer.name} at {how.url}: {type(exc).__name__}") from None
        if not response.is_success:
            raise ConsumerRestartFailed(f"reloading {consumer.name} at {how.url}: HTTP {response.status_code}")
    elif isinstance(how, KubernetesRollout):
        from tasks.kubernetes import rollout_restart

        rollout_restart(how)


@task(cache_policy=NO_CACHE, retries=1, retry_delay_seconds=3)
def restart_consumers(consumers: list[Consumer] | list[dict]) -> list[str]:
    """Restart every consumer in order; returns their names. Accepts models or their JSON form (from the journal).

    One that fails does not stop the others (a rollback must still reload the ones that can); the failures are
    raised together at the end.
    """
    consumers = [Consumer.model_validate(c) for c in consumers]
    failures: list[str] = []
    for consumer in consumers:
        try:
            _restart(consumer)
        except ConsumerRestartFailed as exc:
            failures.append(str(exc))
    if failures:
        raise ConsumerRestartFailed("; ".join(failures))
    return [c.name for c in consumers]
