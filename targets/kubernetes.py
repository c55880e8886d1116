"""Restart a Deployment or StatefulSet as ``kubectl rollout restart`` does, and wait as ``kubectl rollout status``.

The restart sets the pod template annotation ``kubectl.kubernetes.io/restartedAt`` to the current time (RFC 3339,
seconds), which makes the controller replace every Pod. Calling it again starts another rollout and waits for it:
the end state, every Pod started after the call, is the same. A rollout that does not finish within the timeout, or
a Deployment whose ``Progressing`` condition says ``ProgressDeadlineExceeded``, raises
:class:`RolloutFailed`, which the runbook treats as a failed verification.
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from typing import Any, Literal

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from pydantic import BaseModel, Field

from errors import CheckFailed, PermissionDenied

RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"


class RolloutFailed(CheckFailed):
    """A workload could not be restarted, or its rollout did not complete."""


class NoKubernetesCredentials(PermissionDenied):
    """Neither an in-cluster service account nor a usable kubeconfig."""


class KubernetesRollout(BaseModel):
    """Restart a Deployment or StatefulSet as ``kubectl rollout restart`` does and wait for the rollout."""

    kind: Literal["k8s"] = "k8s"
    namespace: str
    workload: Literal["Deployment", "StatefulSet"] = "Deployment"
    name: str
    context: str | None = Field(default=None, description="kubeconfig context (default: in-cluster or current)")
    timeout_seconds: float = 300


def kube_api_client(context: str | None = None) -> k8s.ApiClient:
    """An API client from the standard chain: in-cluster config, else the kubeconfig (``context`` or its current)."""
    if context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        configuration = k8s.Configuration()
        try:
            k8s_config.load_incluster_config(client_configuration=configuration)
            return k8s.ApiClient(configuration)
        except ConfigException:
            pass  # not in a Pod after all (KUBERNETES_SERVICE_HOST without a token file): try the kubeconfig
    # The kubernetes package reads KUBECONFIG once at import; read it now so a later change is honoured.
    kubeconfig = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    try:
        return k8s_config.new_client_from_config(config_file=kubeconfig, context=context)
    except (ConfigException, OSError) as exc:
        raise NoKubernetesCredentials(
            f"no Kubernetes credentials: not running in a Pod, and the kubeconfig {kubeconfig} "
            f"{'has no context ' + repr(context) if context else 'cannot be used'} ({type(exc).__name__}); "
            "set KUBECONFIG or run inside the cluster"
        ) from None


def rollout_restart(rollout: KubernetesRollout, poll_seconds: float = 1.0) -> None:
    """Restart the workload and block until its rollout is complete; see the module docstring."""
    workload = f"{rollout.workload} {rollout.namespace}/{rollout.name}"
    try:
        apps = k8s.AppsV1Api(kube_api_client(rollout.context))
    except NoKubernetesCredentials as exc:
        raise RolloutFailed(f"cannot restart {workload}: {exc}") from None
    is_deployment = rollout.workload == "Deployment"
    read = apps.read_namespaced_deployment if is_deployment else apps.read_namespaced_stateful_set
    patch = apps.patch_namespaced_deployment if is_deployment else apps.patch_namespaced_stateful_set

    current = _api(workload, "read", lambda: read(rollout.name, rollout.namespace))
    strategy = None if is_deployment else current.spec.update_strategy
    if strategy is not None and strategy.type == "OnDelete":
        raise RolloutFailed(
            f"{workload} uses the OnDelete update strategy: a restart would replace no Pod; use RollingUpdate"
        )
    body = {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: _now()}}}}}
    patched = _api(
        workload,
        "patch",
        lambda: patch(rollout.name, rollout.namespace, body, _content_type="application/strategic-merge-patch+json"),
    )
    generation = patched.metadata.generation or 0

    deadline = time.monotonic() + rollout.timeout_seconds
    while True:
        status = _api(workload, "read", lambda: read(rollout.name, rollout.namespace))
        waiting = _deployment_waiting(status, generation) if is_deployment else _statefulset_waiting(status, generation)
        if waiting is None:
            return
        if waiting.startswith("failed:"):
            raise RolloutFailed(f"the rollout of {workload} is stuck: {waiting.removeprefix('failed: ')}")
        if time.monotonic() + poll_seconds > deadline:
            raise RolloutFailed(
                f"the rollout of {workload} did not finish within {rollout.timeout_seconds:g} s ({waiting}); "
                f"look at `kubectl -n {rollout.namespace} rollout status {rollout.workload.lower()}/{rollout.name}`"
            )
        time.sleep(poll_seconds)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _api(workload: str, verb: str, call: Any) -> Any:
    """One API call; an API error becomes RolloutFailed naming the workload (raised unchained)."""
    try:
        return call()
    except ApiException as exc:
        try:
            message = json.loads(exc.body or "{}").get("message") or exc.reason
        except ValueError:
            message = exc.reason
        error = RolloutFailed(f"cannot {verb} {workload}: HTTP {exc.status} {message}")
    raise error


def _deployment_waiting(deployment: k8s.V1Deployment, generation: int) -> str | None:
    """What ``kubectl rollout status`` waits for on a Deployment (None: done; "failed: ...": stuck)."""
    status, spec = deployment.status, deployment.spec
    if status is None or (status.observed_generation or 0) < generation:
        return "waiting for the deployment spec update to be observed"
    for condition in status.conditions or []:
        if condition.type == "Progressing" and condition.reason == "ProgressDeadlineExceeded":
            return "failed: it exceeded its progress deadline (ProgressDeadlineExceeded)"
    replicas = spec.replicas if spec.replicas is not None else 1
    updated, total, available = status.updated_replicas or 0, status.replicas or 0, status.available_replicas or 0
    if updated < replicas:
        return f"{updated} out of {replicas} new replicas have been updated"
    if total > updated:
        return f"{total - updated} old replicas are pending termination"
    if available < updated:
        return f"{available} of {updated} updated replicas are available"
    return None


def _statefulset_waiting(statefulset: k8s.V1StatefulSet, generation: int) -> str | None:
    """What ``kubectl rollout status`` waits for on a StatefulSet with the RollingUpdate strategy."""
    status, spec = statefulset.status, statefulset.spec
    if status is None or not status.observed_generation or status.observed_generation < generation:
        return "waiting for the statefulset spec update to be observed"
    replicas = spec.replicas if spec.replicas is not None else 1
    if (status.ready_replicas or 0) < replicas:
        return f"{status.ready_replicas or 0} of {replicas} pods are ready"
    rolling = spec.update_strategy.rolling_update if spec.update_strategy else None
    if rolling is not None and rolling.partition is not None:
        wanted = replicas - rolling.partition
        if (status.updated_replicas or 0) < wanted:
            return f"{status.updated_replicas or 0} of {wanted} pods updated (partitioned roll out)"
        return None
    if status.update_revision != status.current_revision:
        return f"{status.updated_replicas or 0} pods at revision {status.update_revision}, waiting for the rest"
    return None
