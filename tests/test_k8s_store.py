"""Kubernetes-specific behaviour of the k8s store, against the Kubernetes double (or a real cluster: KUBECONFIG)."""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import Callable

import pytest
from kubernetes import client as k8s

from stores import SecretStore, Stage, open_store
from stores.errors import InvalidStoreURI, SecretNotFound, StagingConflict, StorePermissionDenied
from stores.k8s import VERSIONS_ANNOTATION, KubernetesStore
from tests.fixtures.kubernetes_api import KubernetesAPI
from tests.leaks import canary, error_text

# A real cluster (KUBECONFIG set) needs a read-only context named by K8S_TEST_READONLY_CONTEXT.
reader_context = pytest.mark.skipif(
    bool(os.environ.get("KUBECONFIG")) and not os.environ.get("K8S_TEST_READONLY_CONTEXT"),
    reason="set K8S_TEST_READONLY_CONTEXT to a kubeconfig context that may only read Secrets",
)


def decoded(secret: k8s.V1Secret) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}


def test_stages_are_data_keys_a_pod_can_mount(
    k8s_store_factory: Callable[[], SecretStore], kubernetes_api: KubernetesAPI
) -> None:
    store = k8s_store_factory()
    old, new, rotation = canary(), canary(), str(uuid.uuid4())
    first = store.create(old)
    store.stage(new, rotation)
    secret = kubernetes_api.core().read_namespaced_secret(store.uri.name, kubernetes_api.namespace)
    assert decoded(secret) == {"current": old, "pending": new}
    slots = json.loads(secret.metadata.annotations[VERSIONS_ANNOTATION])
    assert {key: slot["id"] for key, slot in slots.items()} == {"current": first, "pending": rotation}
    store.promote(rotation)
    secret = kubernetes_api.core().read_namespaced_secret(store.uri.name, kubernetes_api.namespace)
    assert decoded(secret) == {"current": new, "previous": old}


def test_a_writer_in_between_makes_stage_fail_with_a_conflict_and_change_nothing(
    k8s_store_factory: Callable[[], SecretStore], kubernetes_api: KubernetesAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = k8s_store_factory()
    assert isinstance(store, KubernetesStore)
    value, mine = canary(), canary()
    store.create(value)
    real_get = store._get

    def get_then_another_writer() -> object:
        seen = real_get()
        # Another writer labels the Secret right after this store read it: the resourceVersion moves on.
        patch = {"metadata": {"labels": {"touched-by": "someone-else"}}}
        kubernetes_api.core().patch_namespaced_secret(
            store.uri.name, kubernetes_api.namespace, patch, _content_type="application/merge-patch+json"
        )
        monkeypatch.setattr(store, "_get", real_get)
        return seen

    monkeypatch.setattr(store, "_get", get_then_another_writer)
    with pytest.raises(StagingConflict) as error:
        store.stage(mine, str(uuid.uuid4()))
    assert store.uri.name in str(error.value) and kubernetes_api.namespace in str(error.value)
    assert mine not in error_text(error.value) and value not in error_text(error.value)
    secret = kubernetes_api.core().read_namespaced_secret(store.uri.name, kubernetes_api.namespace)
    assert decoded(secret) == {"current": value}
    assert secret.metadata.labels["touched-by"] == "someone-else"


@reader_context
def test_a_read_only_identity_is_denied_and_nothing_changes(
    k8s_store_factory: Callable[[], SecretStore], kubernetes_api: KubernetesAPI
) -> None:
    context = "double-reader" if kubernetes_api.double else os.environ.get("K8S_TEST_READONLY_CONTEXT")
    store = k8s_store_factory()
    value = canary()
    first = store.create(value)
    reader = open_store(f"{store.uri.display}?context={context}")
    assert reader.read() == value
    with pytest.raises(StorePermissionDenied) as error:
        reader.stage(value, str(uuid.uuid4()))
    assert store.uri.name in str(error.value)
    assert value not in error_text(error.value)
    assert [v.version_id for v in store.describe().versions] == [first]


def test_a_missing_namespace_is_named(kubernetes_api: KubernetesAPI) -> None:
    namespace = f"no-such-ns-{uuid.uuid4().hex[:6]}"
    store = open_store(f"k8s://{namespace}/jwt")
    with pytest.raises(SecretNotFound) as error:
        store.create(canary())
    assert namespace in str(error.value)
    with pytest.raises(SecretNotFound) as error:
        store.read()
    assert namespace in str(error.value) and "jwt" in str(error.value)


def test_a_missing_secret_is_not_found(k8s_store_factory: Callable[[], SecretStore]) -> None:
    store = k8s_store_factory()
    for call in (store.read, lambda: store.promote(str(uuid.uuid4())), lambda: store.discard(str(uuid.uuid4()))):
        with pytest.raises(SecretNotFound) as error:
            call()
        assert store.uri.name in str(error.value)


def test_a_secret_made_with_kubectl_is_adopted(
    k8s_store_factory: Callable[[], SecretStore], kubernetes_api: KubernetesAPI
) -> None:
    store = k8s_store_factory()
    value, new = canary(), canary()
    body = k8s.V1Secret(
        metadata=k8s.V1ObjectMeta(name=store.uri.name),
        string_data=None,
        data={"current": base64.b64encode(value.encode()).decode()},
    )
    kubernetes_api.core().create_namespaced_secret(kubernetes_api.namespace, body)
    assert store.read() == value
    assert store.describe().version_at(Stage.CURRENT) == "initial"
    rotation = str(uuid.uuid4())
    store.stage(new, rotation)
    store.promote(rotation)
    assert store.read() == new and store.read(Stage.PREVIOUS) == value


def test_bad_configuration_is_refused_clearly(kubernetes_api: KubernetesAPI) -> None:
    with pytest.raises(InvalidStoreURI, match="context"):
        open_store("k8s://default/jwt?cluster=prod")
    with pytest.raises(StorePermissionDenied, match="no-such-context"):
        open_store("k8s://default/jwt?context=no-such-context").read()
