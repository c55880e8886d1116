"""Rolling restarts of Kubernetes consumers, against the Kubernetes protocol double (or a real cluster)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from targets.consumers import Consumer
from targets.kubernetes import KubernetesRollout, RolloutFailed, rollout_restart
from tasks.consumers import restart_consumers
from tests.fixtures.kubernetes_api import KubernetesAPI

POLL = 0.1


@pytest.mark.parametrize("kind", ["Deployment", "StatefulSet"])
def test_restart_sets_the_annotation_and_waits_for_the_rollout(kubernetes_api: KubernetesAPI, kind: str) -> None:
    name = kubernetes_api.create_workload(kind)
    before = datetime.now(UTC).replace(microsecond=0)
    rollout_restart(KubernetesRollout(namespace=kubernetes_api.namespace, workload=kind, name=name), POLL)
    stamp = kubernetes_api.restarted_at(kind, name)
    assert stamp is not None
    assert before <= datetime.fromisoformat(stamp) <= datetime.now(UTC)
    apps = kubernetes_api.apps()
    read = apps.read_namespaced_deployment if kind == "Deployment" else apps.read_namespaced_stateful_set
    workload = read(name, kubernetes_api.namespace)
    assert workload.status.observed_generation >= workload.metadata.generation >= 2
    assert workload.status.ready_replicas == workload.spec.replicas


def test_restarting_twice_rolls_out_twice_and_succeeds(kubernetes_api: KubernetesAPI) -> None:
    name = kubernetes_api.create_workload()
    rollout = KubernetesRollout(namespace=kubernetes_api.namespace, name=name)
    rollout_restart(rollout, POLL)
    time.sleep(1.1)  # restartedAt has a resolution of one second, as kubectl's has
    rollout_restart(rollout, POLL)
    workload = kubernetes_api.apps().read_namespaced_deployment(name, kubernetes_api.namespace)
    assert workload.metadata.generation >= 3
    assert workload.status.updated_replicas == workload.status.available_replicas == workload.spec.replicas


def test_a_deployment_past_its_progress_deadline_fails_before_the_timeout(kubernetes_api: KubernetesAPI) -> None:
    name = kubernetes_api.create_workload(stuck=True)
    started = time.monotonic()
    with pytest.raises(RolloutFailed) as error:
        rollout_restart(KubernetesRollout(namespace=kubernetes_api.namespace, name=name, timeout_seconds=60), POLL)
    assert time.monotonic() - started < 60
    assert name in str(error.value)
    assert "ProgressDeadlineExceeded" in str(error.value) or "did not finish" in str(error.value)
    assert kubernetes_api.restarted_at("Deployment", name) is not None


def test_a_stuck_statefulset_fails_at_its_timeout(kubernetes_api: KubernetesAPI) -> None:
    name = kubernetes_api.create_workload("StatefulSet", stuck=True)
    started = time.monotonic()
    rollout = KubernetesRollout(
        namespace=kubernetes_api.namespace, workload="StatefulSet", name=name, timeout_seconds=2
    )
    with pytest.raises(RolloutFailed) as error:
        rollout_restart(rollout, POLL)
    elapsed = time.monotonic() - started
    assert 1.5 <= elapsed < 5
    assert f"StatefulSet {kubernetes_api.namespace}/{name}" in str(error.value)
    assert "did not finish within 2 s" in str(error.value)


def test_a_missing_workload_is_named_and_nothing_is_created(kubernetes_api: KubernetesAPI) -> None:
    with pytest.raises(RolloutFailed) as error:
        rollout_restart(KubernetesRollout(namespace=kubernetes_api.namespace, name="no-such-app"), POLL)
    assert "no-such-app" in str(error.value)
    assert "404" in str(error.value)
    names = [d.metadata.name for d in kubernetes_api.apps().list_namespaced_deployment(kubernetes_api.namespace).items]
    assert "no-such-app" not in names


def test_restart_consumers_restarts_a_kubernetes_consumer(kubernetes_api: KubernetesAPI) -> None:
    name = kubernetes_api.create_workload()
    consumer = Consumer(name="auth", restart=KubernetesRollout(namespace=kubernetes_api.namespace, name=name))
    started = datetime.now(UTC) - timedelta(seconds=1)
    assert restart_consumers.fn("k8s://ns/secret", "rotation-1", [consumer.model_dump(mode="json")]) == ["auth"]
    stamp = kubernetes_api.restarted_at("Deployment", name)
    assert stamp is not None and datetime.fromisoformat(stamp) >= started.replace(microsecond=0)
