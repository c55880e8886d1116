"""Restarting the services that read a secret, so that they load its current value.

A consumer is restarted by a command, by an HTTP reload call, as a Kubernetes rollout, or not at all (it re-reads
the secret by itself). Each kind is a pydantic model; ``Consumer.restart`` picks one by its ``kind`` field.
"""

from __future__ import annotations

import subprocess
from typing import Annotated, Literal

import httpx
from pydantic import BaseModel, Field

from errors import CheckFailed
from targets.http import http_client
from targets.kubernetes import KubernetesRollout, rollout_restart


class ConsumerRestartFailed(CheckFailed):
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


def restart(consumer: Consumer) -> None:
    """Restart one consumer and return once it has loaded the current secret; raises :class:`ConsumerRestartFailed`."""
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
            response = http_client(how.verify_tls).request(how.method, how.url, timeout=how.timeout_seconds)
        except httpx.HTTPError as exc:
            raise ConsumerRestartFailed(f"reloading {consumer.name} at {how.url}: {type(exc).__name__}") from None
        if not response.is_success:
            raise ConsumerRestartFailed(f"reloading {consumer.name} at {how.url}: HTTP {response.status_code}")
    elif isinstance(how, KubernetesRollout):
        try:
            rollout_restart(how)
        except CheckFailed as exc:
            raise ConsumerRestartFailed(f"restarting {consumer.name}: {exc}") from None
