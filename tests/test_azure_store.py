"""Azure-specific behaviour of the Key Vault store, against the Key Vault protocol double (or a real vault when
AZURE_KEYVAULT_URL is set: see tests/fixtures/azure_store.py)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable

import pytest
from azure.keyvault.secrets import SecretClient

from stores import SecretStore, SecretURI, Stage
from stores.azure import AzureStore
from stores.errors import (
    InvalidStoreURI,
    SecretNotFound,
    StagingConflict,
    StorePermissionDenied,
    StoreUnavailable,
)
from tests.fixtures.azure_store import AzureTarget, StaticTokenCredential
from tests.fixtures.ports import free_port
from tests.leaks import canary, error_text

# Against a real vault (AZURE_KEYVAULT_URL set): no read-only identity to hand, and the challenge always matches.
double_only = pytest.mark.skipif(bool(os.environ.get("AZURE_KEYVAULT_URL")), reason="double only")


def azure_store(make: Callable[[], SecretStore]) -> AzureStore:
    store = make()
    assert isinstance(store, AzureStore)
    return store


def app_reads(store: AzureStore) -> str | None:
    """What an application reads: the latest version, through its own client."""
    return store.client.get_secret(store.secret_name).value


def versions_tagged(client: SecretClient, name: str, rotation_id: str) -> list[tuple[str, bool]]:
    return [
        (str(p.version), bool(p.enabled))
        for p in client.list_properties_of_secret_versions(name)
        if (p.tags or {}).get("rotation-version") == rotation_id
    ]


def test_applications_reading_the_latest_version_see_current_through_a_whole_rotation(
    azure_store_factory: Callable[[], SecretStore],
) -> None:
    store = azure_store(azure_store_factory)
    old, new, rotation = canary(), canary(), str(uuid.uuid4())
    first = store.create(old)
    assert app_reads(store) == old
    store.stage(new, rotation)
    assert app_reads(store) == old, "a staged value must not reach applications before promotion"
    assert store.read(Stage.PENDING) == new
    tags = store.client.get_secret(store.secret_name).properties.tags or {}
    assert tags == {"rotation-current": first, "rotation-pending": rotation, "rotation-version": first}
    store.promote(rotation)
    assert app_reads(store) == new
    tags = store.client.get_secret(store.secret_name).properties.tags or {}
    assert tags == {"rotation-current": rotation, "rotation-previous": first, "rotation-version": rotation}
    store.revert(rotation, None)
    assert app_reads(store) == old
    assert store.describe().version_at(Stage.CURRENT) == first


def test_discard_disables_every_key_vault_version_of_the_value(azure_store_factory: Callable[[], SecretStore]) -> None:
    store = azure_store(azure_store_factory)
    current, rotation = canary(), str(uuid.uuid4())
    store.create(current)
    store.stage(canary(), rotation)
    assert [enabled for _, enabled in versions_tagged(store.client, store.secret_name, rotation)] == [True]
    store.discard(rotation)
    assert [enabled for _, enabled in versions_tagged(store.client, store.secret_name, rotation)] == [False]
    assert app_reads(store) == current
    assert "rotation-pending" not in (store.client.get_secret(store.secret_name).properties.tags or {})


def test_a_writer_in_between_makes_stage_fail_with_a_conflict_and_change_nothing(
    azure_store_factory: Callable[[], SecretStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = azure_store(azure_store_factory)
    store.create(canary())
    other, mine, rotation = canary(), canary(), str(uuid.uuid4())
    real_state = store._state

    def state_then_another_writer() -> object:
        seen = real_state()
        store.client.set_secret(store.secret_name, other)  # someone with the az CLI, right after this store read
        return seen

    monkeypatch.setattr(store, "_state", state_then_another_writer)
    with pytest.raises(StagingConflict) as error:
        store.stage(mine, rotation)
    monkeypatch.undo()
    assert store.uri.name in str(error.value)
    assert mine not in error_text(error.value) and other not in error_text(error.value)
    assert app_reads(store) == other
    assert versions_tagged(store.client, store.secret_name, rotation) == []


def test_stage_interrupted_before_its_pin_is_repaired_by_the_retry(
    azure_store_factory: Callable[[], SecretStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = azure_store(azure_store_factory)
    old, new, rotation = canary(), canary(), str(uuid.uuid4())
    first = store.create(old)
    real_write = store._write
    writes: list[str] = []

    def crash_on_the_pin(value: str, tags: dict[str, str], action: str) -> object:
        writes.append(action)
        if len(writes) == 2:
            raise KeyboardInterrupt("worker killed between the two writes of stage")
        return real_write(value, tags, action)

    monkeypatch.setattr(store, "_write", crash_on_the_pin)
    with pytest.raises(KeyboardInterrupt):
        store.stage(new, rotation)
    monkeypatch.undo()
    assert app_reads(store) == new  # the window the module docstring names
    assert store.describe().version_at(Stage.CURRENT) == first  # but the stages are consistent
    assert store.stage(canary(), rotation) == rotation
    assert app_reads(store) == old
    assert store.read(Stage.PENDING) == new


@double_only
def test_a_read_only_identity_is_refused_and_nothing_changes(
    azure_target: AzureTarget, azure_store_factory: Callable[[], SecretStore]
) -> None:
    store = azure_store(azure_store_factory)
    value = canary()
    store.create(value)
    reader = azure_target.store(store.secret_name, credential=azure_target.credential("reader"))
    assert reader.read() == value
    staged = canary()
    with pytest.raises(StorePermissionDenied) as denied:
        reader.stage(staged, str(uuid.uuid4()))
    assert store.secret_name in str(denied.value) and "Secrets Officer" in str(denied.value)
    assert value not in error_text(denied.value) and staged not in error_text(denied.value)
    assert [v.stages for v in store.describe().versions] == [(Stage.CURRENT,)]


def test_a_rejected_token_is_permission_denied(azure_target: AzureTarget) -> None:
    store = azure_target.store(f"rotation-tests-{uuid.uuid4().hex[:12]}", StaticTokenCredential("not-a-valid-token"))
    with pytest.raises(StorePermissionDenied) as error:
        store.read()
    assert store.secret_name in str(error.value) and "az login" in str(error.value)


def test_a_missing_secret_names_the_vault_and_the_secret(azure_target: AzureTarget) -> None:
    store = azure_target.store(f"rotation-tests-{uuid.uuid4().hex[:12]}")
    with pytest.raises(SecretNotFound) as error:
        store.read()
    assert store.secret_name in str(error.value) and azure_target.vault_url in str(error.value)


@double_only
def test_the_challenge_resource_is_checked_unless_the_uri_says_otherwise(azure_target: AzureTarget) -> None:
    uri = f"azure://double/some-secret?url={azure_target.double.url}&ca_file={azure_target.double.ca_file}"
    store = AzureStore(SecretURI.parse(uri), credential=azure_target.credential())
    with pytest.raises(StorePermissionDenied) as error:
        store.read()
    assert "verify_challenge_resource=false" in str(error.value)


@pytest.mark.parametrize(
    "uri",
    [
        "azure://vault/name?url=http://127.0.0.1:1",
        "azure://vault/name?verify_challenge_resource=false",
        "azure://vault/name?region=westeurope",
    ],
)
def test_bad_options_are_refused_before_any_call(uri: str) -> None:
    with pytest.raises(InvalidStoreURI) as error:
        AzureStore(SecretURI.parse(uri))
    assert "azure://vault/name" in str(error.value)


def test_an_unreachable_vault_is_unavailable(azure_target: AzureTarget) -> None:
    uri = SecretURI.parse(f"azure://vault/name?url=https://127.0.0.1:{free_port()}&verify_challenge_resource=false")
    store = AzureStore(uri, credential=StaticTokenCredential("unused"))
    with pytest.raises(StoreUnavailable) as error:
        store.read()
    assert "127.0.0.1" in str(error.value)
