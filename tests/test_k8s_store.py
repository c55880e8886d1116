"""Kubernetes-specific behaviour of the k8s store, against the Kubernetes double (or a real cluster: KUBECONFIG)."""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from stores import SecretStore, Stage, open_store
from stores.errors import InvalidRequest, InvalidStoreURI, SecretNotFound, StagingConflict, StorePermissionDenied
from stores.k8s import PROJECTED_ANNOTATION, VERSIONS_ANNOTATION, KubernetesStore
from tests.fixtures.kubernetes_api import KubernetesAPI
from tests.leaks import canary, error_text
from tests.tls import write_test_pki

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
    assert decoded(secret) == {"current": old, "pending": new, "value": old}  # a plain value is projected on "value"
    slots = json.loads(secret.metadata.annotations[VERSIONS_ANNOTATION])
    assert {key: slot["id"] for key, slot in slots.items()} == {"current": first, "pending": rotation}
    store.promote(rotation)
    secret = kubernetes_api.core().read_namespaced_secret(store.uri.name, kubernetes_api.namespace)
    assert decoded(secret) == {"current": new, "previous": old, "value": new}


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
    assert decoded(secret) == {"current": value, "value": value}
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


# --- consumers reading the conventional keys -----------------------------------------------------------------------


def container_sees(kubernetes_api: KubernetesAPI, pod: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    """What the container of ``pod`` (a Pod spec) sees, resolved the way the kubelet does from the API: environment
    variables from ``secretKeyRef``, and the files of each mounted ``secret`` volume (all keys, or its ``items``)."""
    core = kubernetes_api.core()

    def data(name: str) -> dict[str, str]:
        return decoded(core.read_namespaced_secret(name, kubernetes_api.namespace))

    container = pod["containers"][0]
    env = {
        e["name"]: data(e["valueFrom"]["secretKeyRef"]["name"])[e["valueFrom"]["secretKeyRef"]["key"]]
        for e in container.get("env", [])
    }
    volumes = {v["name"]: v["secret"] for v in pod.get("volumes", [])}
    files: dict[str, str] = {}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        keys = data(volume["secretName"])
        for item in volume.get("items") or [{"key": key, "path": key} for key in keys]:
            files[f"{mount['mountPath']}/{item['path']}"] = keys[item["key"]]  # a missing key fails the Pod: KeyError
    return env, files


def test_a_deployment_reading_username_and_password_sees_current_through_a_rotation(
    k8s_store_factory: Callable[[], SecretStore], kubernetes_api: KubernetesAPI
) -> None:
    store = k8s_store_factory()
    old = {"engine": "postgres", "host": "db", "port": 5432, "username": "app", "password": canary()}
    new = {**old, "username": "app_clone", "password": canary()}
    store.create(json.dumps(old))
    name = store.uri.name
    pod = {
        "containers": [
            {
                "env": [
                    {"name": "DB_USER", "valueFrom": {"secretKeyRef": {"name": name, "key": "username"}}},
                    {"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": name, "key": "password"}}},
                    {"name": "DB_PORT", "valueFrom": {"secretKeyRef": {"name": name, "key": "port"}}},
                ]
            }
        ]
    }
    assert container_sees(kubernetes_api, pod)[0] == {
        "DB_USER": "app",
        "DB_PASSWORD": old["password"],
        "DB_PORT": "5432",
    }
    rotation = str(uuid.uuid4())
    store.stage(json.dumps(new), rotation)
    assert container_sees(kubernetes_api, pod)[0]["DB_PASSWORD"] == old["password"], "a staged value stays out"
    store.promote(rotation)
    assert container_sees(kubernetes_api, pod)[0] == {
        "DB_USER": "app_clone", "DB_PASSWORD": new["password"], "DB_PORT": "5432"
    }  # fmt: skip
    store.revert(rotation, None)
    assert container_sees(kubernetes_api, pod)[0]["DB_PASSWORD"] == old["password"]


def test_a_tls_pair_is_a_kubernetes_tls_secret_mounted_as_files(
    k8s_store_factory: Callable[[], SecretStore], kubernetes_api: KubernetesAPI, tmp_path: Path
) -> None:
    store = k8s_store_factory()

    def pair(folder: str) -> tuple[str, str]:
        _, cert, key = write_test_pki(tmp_path / folder)
        return cert.read_text(), key.read_text()

    (old_cert, old_key), (new_cert, new_key) = pair("old"), pair("new")
    store.create(old_cert + old_key)  # PEM text: the certificate, then its private key
    secret = kubernetes_api.core().read_namespaced_secret(store.uri.name, kubernetes_api.namespace)
    assert secret.type == "kubernetes.io/tls"
    pod = {
        "containers": [{"volumeMounts": [{"name": "tls", "mountPath": "/etc/tls"}]}],
        "volumes": [
            {
                "name": "tls",
                "secret": {"secretName": store.uri.name, "items": [
                    {"key": "tls.crt", "path": "tls.crt"}, {"key": "tls.key", "path": "tls.key"}
                ]},
            }
        ],
    }  # fmt: skip
    assert container_sees(kubernetes_api, pod)[1] == {"/etc/tls/tls.crt": old_cert, "/etc/tls/tls.key": old_key}
    rotation = str(uuid.uuid4())
    store.stage(new_cert + new_key, rotation)
    store.promote(rotation)
    assert container_sees(kubernetes_api, pod)[1] == {"/etc/tls/tls.crt": new_cert, "/etc/tls/tls.key": new_key}
    # Mounted whole, the volume also holds the stages: the files the consumer reads are still exactly the pair.
    pod["volumes"][0]["secret"].pop("items")
    files = container_sees(kubernetes_api, pod)[1]
    assert files["/etc/tls/tls.crt"] == new_cert and files["/etc/tls/tls.key"] == new_key


def test_the_keys_option_names_the_projection(
    k8s_store_factory: Callable[[], SecretStore], kubernetes_api: KubernetesAPI
) -> None:
    plain = open_store(f"{k8s_store_factory().uri.display}?keys=.:secret-key")
    value = canary()
    plain.create(value)
    pod = {
        "containers": [
            {"env": [{"name": "KEY", "valueFrom": {"secretKeyRef": {"name": plain.uri.name, "key": "secret-key"}}}]}
        ]
    }
    assert container_sees(kubernetes_api, pod)[0] == {"KEY": value}
    renamed = open_store(f"{k8s_store_factory().uri.display}?keys=user:DB_USER,password:DB_PASSWORD")
    renamed.create(json.dumps({"user": "app", "password": value}))
    secret = kubernetes_api.core().read_namespaced_secret(renamed.uri.name, kubernetes_api.namespace)
    assert decoded(secret)["DB_USER"] == "app" and decoded(secret)["DB_PASSWORD"] == value
    with pytest.raises(InvalidRequest, match="no field 'user'"):
        renamed.stage(json.dumps({"password": canary()}), str(uuid.uuid4()))
    with pytest.raises(InvalidStoreURI, match="keys="):
        open_store(f"{renamed.uri.display.split('?')[0]}?keys=user")


def test_projected_keys_follow_current_and_keys_of_others_are_kept(
    k8s_store_factory: Callable[[], SecretStore], kubernetes_api: KubernetesAPI
) -> None:
    store = k8s_store_factory()
    store.create(json.dumps({"username": "app", "password": canary(), "note": "old"}))
    core, namespace = kubernetes_api.core(), kubernetes_api.namespace
    patch = {"data": {"ca.crt": base64.b64encode(b"someone else's").decode()}}
    core.patch_namespaced_secret(store.uri.name, namespace, patch, _content_type="application/merge-patch+json")
    rotation, password = str(uuid.uuid4()), canary()
    store.stage(json.dumps({"username": "app", "password": password}), rotation)
    store.promote(rotation)
    secret = core.read_namespaced_secret(store.uri.name, namespace)
    keys = decoded(secret)
    assert keys["password"] == password and "note" not in keys, "a field the value no longer has leaves the Secret"
    assert keys["ca.crt"] == "someone else's"
    assert json.loads(secret.metadata.annotations[PROJECTED_ANNOTATION]) == ["password", "username"]
    before = core.read_namespaced_secret(store.uri.name, namespace)
    clashing = canary()
    with pytest.raises(InvalidRequest, match=r"ca\.crt") as error:
        store.stage(json.dumps({"username": "app", "password": clashing, "ca.crt": "mine"}), str(uuid.uuid4()))
    assert clashing not in error_text(error.value)
    assert (
        core.read_namespaced_secret(store.uri.name, namespace).metadata.resource_version
        == before.metadata.resource_version
    )


def test_a_secret_made_with_kubectl_in_the_consumers_shape_is_adopted(
    k8s_store_factory: Callable[[], SecretStore], kubernetes_api: KubernetesAPI
) -> None:
    store = k8s_store_factory()
    password = canary()
    data = {"username": "app", "password": password}
    body = k8s.V1Secret(
        metadata=k8s.V1ObjectMeta(name=store.uri.name),
        data={key: base64.b64encode(value.encode()).decode() for key, value in data.items()},
    )
    kubernetes_api.core().create_namespaced_secret(kubernetes_api.namespace, body)
    assert json.loads(store.read()) == data
    rotation, new = str(uuid.uuid4()), canary()
    store.stage(json.dumps({"username": "app", "password": new}), rotation)
    store.promote(rotation)
    keys = decoded(kubernetes_api.core().read_namespaced_secret(store.uri.name, kubernetes_api.namespace))
    assert keys["password"] == new and json.loads(keys["previous"]) == data
