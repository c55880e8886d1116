"""The JWT runbook with its keyset in Vault and its consumers restarted as Kubernetes rollouts.

Against the Vault and Kubernetes protocol doubles by default; against a real Vault and cluster when VAULT_ADDR and
KUBECONFIG are set (see tests/fixtures/vault_store.py and tests/fixtures/kubernetes_api.py).
"""

from __future__ import annotations

import pytest

from flows.jwt import JwtPolicy, rotate_jwt_signing_key
from flows.recovery import rollback_rotation
from rotation import RotationOptions
from rotation.compensation import RollbackFailed
from rotation.journal import Journal, RotationState
from stores import Stage
from targets.consumers import Consumer, HttpReload, KubernetesRollout
from targets.jwt.keyset import JwtKeyset, new_key
from tests.fixtures.crash import OPERATOR
from tests.fixtures.kubernetes_api import WORKING_IMAGE
from tests.test_jwt_runbook import accepted, signing_kid, token

SHORT = JwtPolicy(token_lifetime_seconds=1, grace_seconds=1)


@pytest.fixture
def rig(prefect_server, vault_store_factory, kubernetes_api, auth_service, tmp_path):
    store = vault_store_factory()
    store.create(JwtKeyset(keys=[new_key("HS256", 512)]).to_secret())
    service = auth_service(store.uri.display)  # reads Vault through VAULT_ADDR/VAULT_TOKEN, as a pod would
    journal = Journal(tmp_path / "journal.db")
    options = RotationOptions(approve_promote=False, journal=str(journal.path))
    return store, service, journal, options


def consumers(service, kubernetes_api, workload: str) -> list[Consumer]:
    base = service.base_url
    return [
        Consumer(name="auth", restart=HttpReload(url=f"{base}/reload"), verify_url=f"{base}/me"),
        Consumer(
            name="auth-deployment",
            restart=KubernetesRollout(namespace=kubernetes_api.namespace, name=workload, timeout_seconds=4),
        ),
    ]


def test_a_rotation_in_vault_restarts_the_deployment(rig, kubernetes_api) -> None:
    store, service, _, options = rig
    workload = kubernetes_api.create_workload("Deployment")
    summary = rotate_jwt_signing_key(
        store.uri.display, consumers=consumers(service, kubernetes_api, workload), policy=SHORT, options=options
    )
    assert summary["state"] == RotationState.COMPLETED
    assert kubernetes_api.restarted_at("Deployment", workload) is not None
    assert [k.kid for k in JwtKeyset.from_secret(store.read(Stage.CURRENT)).keys] == [summary["new_kid"]]
    assert signing_kid(service) == summary["new_kid"]


def test_a_stuck_rollout_rolls_the_rotation_back(rig, kubernetes_api) -> None:
    store, service, journal, options = rig
    workload = kubernetes_api.create_workload("Deployment", stuck=True)
    before, old_kid = store.describe(), signing_kid(service)
    old_token = token(service)
    with pytest.raises(RollbackFailed, match=f"Deployment.*{workload}"):
        rotate_jwt_signing_key(
            store.uri.display, consumers=consumers(service, kubernetes_api, workload), policy=SHORT, options=options
        )
    # The secret is back and the service reloaded the old keyset; only the broken deployment still needs a restart.
    after = store.describe()
    assert after.version_at(Stage.CURRENT) == before.version_at(Stage.CURRENT)
    assert after.version_at(Stage.PENDING) is None
    assert signing_kid(service) == old_kid
    assert accepted(service, old_token)
    (record,) = journal.list()
    assert record.state is RotationState.ROLLBACK_FAILED
    assert workload in record.reason

    apps = kubernetes_api.apps()
    deployment = apps.read_namespaced_deployment(workload, kubernetes_api.namespace)
    deployment.spec.template.spec.containers[0].image = WORKING_IMAGE  # the operator fixes the deployment
    apps.replace_namespaced_deployment(workload, kubernetes_api.namespace, deployment)
    rollback_rotation(record.id, OPERATOR, journal=str(journal.path))
    assert journal.get(record.id).state is RotationState.ROLLED_BACK
    assert journal.list(active_only=True) == []
    assert store.describe().version_at(Stage.CURRENT) == before.version_at(Stage.CURRENT)
