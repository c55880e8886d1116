"""Google-specific behaviour of the Secret Manager store, against the Secret Manager protocol double (or the real
service when GOOGLE_CLOUD_PROJECT is set: see tests/fixtures/gcp_store.py)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable

import pytest
from google.cloud import secretmanager_v1 as sm
from google.oauth2.credentials import Credentials as BearerToken
from google.protobuf import field_mask_pb2

from stores import SecretStore, SecretURI, Stage
from stores.errors import InvalidStoreURI, SecretNotFound, StagingConflict, StorePermissionDenied, StoreUnavailable
from stores.gcp import GcpStore
from tests.fixtures.gcp_store import GcpTarget
from tests.fixtures.ports import free_port
from tests.leaks import canary, error_text

# Against the real service (GOOGLE_CLOUD_PROJECT set) there is no read-only identity to hand.
double_only = pytest.mark.skipif(bool(os.environ.get("GOOGLE_CLOUD_PROJECT")), reason="needs a read-only identity")


def gcp_store(make: Callable[[], SecretStore]) -> GcpStore:
    store = make()
    assert isinstance(store, GcpStore)
    return store


def app_reads(store: GcpStore, alias: str) -> str:
    """What an application reads from ``versions/ALIAS`` with its own client."""
    return store.client.access_secret_version(name=f"{store.name}/versions/{alias}").payload.data.decode()


def version_numbers(store: GcpStore) -> list[int]:
    return sorted(int(v.name.rpartition("/")[2]) for v in store.client.list_secret_versions(parent=store.name))


def test_applications_reading_the_current_alias_see_current_through_a_whole_rotation(
    gcp_store_factory: Callable[[], SecretStore],
) -> None:
    store = gcp_store(gcp_store_factory)
    old, new, rotation = canary(), canary(), str(uuid.uuid4())
    first = store.create(old)
    assert app_reads(store, "current") == old
    staged = store.stage(new, rotation)
    assert app_reads(store, "current") == old
    assert app_reads(store, "pending") == new
    assert app_reads(store, "latest") == new, "why applications must read versions/current, not latest"
    secret = store.client.get_secret(name=store.name)
    assert dict(secret.version_aliases) == {"current": int(first), "pending": int(staged)}
    assert secret.annotations[f"rotation.{rotation}"] == staged
    store.promote(rotation)
    assert app_reads(store, "current") == new
    assert app_reads(store, "previous") == old
    store.revert(rotation, None)
    assert app_reads(store, "current") == old
    assert dict(store.client.get_secret(name=store.name).version_aliases) == {"current": int(first)}


def test_discard_destroys_the_staged_version(gcp_store_factory: Callable[[], SecretStore]) -> None:
    store = gcp_store(gcp_store_factory)
    store.create(canary())
    rotation = str(uuid.uuid4())
    staged = store.stage(canary(), rotation)
    store.discard(rotation)
    version = store.client.get_secret_version(name=f"{store.name}/versions/{staged}")
    assert version.state == sm.SecretVersion.State.DESTROYED
    assert "pending" not in store.client.get_secret(name=store.name).version_aliases


def test_a_writer_in_between_makes_stage_fail_with_a_conflict_and_change_nothing(
    gcp_store_factory: Callable[[], SecretStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = gcp_store(gcp_store_factory)
    store.create(canary())
    mine, rotation = canary(), str(uuid.uuid4())
    real_state = store._state

    def state_then_another_writer() -> object:
        seen = real_state()
        # Another writer (gcloud secrets update --update-labels, say) changes the secret right after this read.
        other = sm.Secret(name=store.name, labels={"team": "other"})
        store.client.update_secret(secret=other, update_mask=field_mask_pb2.FieldMask(paths=["labels"]))
        return seen

    versions_before = version_numbers(store)
    monkeypatch.setattr(store, "_state", state_then_another_writer)
    with pytest.raises(StagingConflict) as error:
        store.stage(mine, rotation)
    monkeypatch.undo()
    assert store.uri.name in str(error.value) and "etag" in str(error.value)
    assert mine not in error_text(error.value)
    secret = store.client.get_secret(name=store.name)
    assert version_numbers(store) == versions_before
    assert f"rotation.{rotation}" not in secret.annotations
    assert set(secret.version_aliases) == {"current"}


def test_stage_interrupted_after_adding_its_version_adopts_it_on_retry(
    gcp_store_factory: Callable[[], SecretStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = gcp_store(gcp_store_factory)
    store.create(canary())
    value, rotation = canary(), str(uuid.uuid4())
    real_patch = store._patch
    patches: list[str] = []

    def crash_before_the_alias(*args: object, **kwargs: object) -> object:
        patches.append(str(args[1]))
        if len(patches) == 2:
            raise KeyboardInterrupt("worker killed after addVersion, before the PENDING alias")
        return real_patch(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "_patch", crash_before_the_alias)
    with pytest.raises(KeyboardInterrupt):
        store.stage(value, rotation)
    monkeypatch.undo()
    assert version_numbers(store) == [1, 2]
    assert store.stage(canary(), rotation) == "2"
    assert version_numbers(store) == [1, 2]
    assert store.read(Stage.PENDING) == value


@double_only
def test_a_read_only_identity_is_refused_and_nothing_changes(
    gcp_target: GcpTarget, gcp_store_factory: Callable[[], SecretStore]
) -> None:
    store = gcp_store(gcp_store_factory)
    value, staged = canary(), canary()
    store.create(value)
    reader = gcp_target.store(store.secret_id, BearerToken(token=gcp_target.double.issue_token("reader")))
    assert reader.read() == value
    with pytest.raises(StorePermissionDenied) as error:
        reader.stage(staged, str(uuid.uuid4()))
    assert store.secret_id in str(error.value) and "roles/secretmanager" in str(error.value)
    assert value not in error_text(error.value) and staged not in error_text(error.value)
    assert [v.stages for v in store.describe().versions] == [(Stage.CURRENT,)]


def test_a_rejected_token_is_permission_denied(gcp_target: GcpTarget) -> None:
    store = gcp_target.store(f"rotation-tests-{uuid.uuid4().hex[:12]}", BearerToken(token="not-a-valid-token"))
    with pytest.raises(StorePermissionDenied) as error:
        store.read()
    assert store.secret_id in str(error.value) and "application-default login" in str(error.value)


def test_a_missing_secret_names_the_project_and_the_secret(gcp_target: GcpTarget) -> None:
    store = gcp_target.store(f"rotation-tests-{uuid.uuid4().hex[:12]}")
    with pytest.raises(SecretNotFound) as error:
        store.describe()
    assert store.secret_id in str(error.value) and gcp_target.project in str(error.value)


@pytest.mark.parametrize(
    "uri",
    [
        "gcp://project/name?endpoint=http://secretmanager.example.com",
        "gcp://project/name?endpoint=ftp://127.0.0.1",
        "gcp://project/name?region=europe-west1",
    ],
)
def test_bad_options_are_refused_before_any_call(uri: str) -> None:
    with pytest.raises(InvalidStoreURI) as error:
        GcpStore(SecretURI.parse(uri))
    assert "gcp://project/name" in str(error.value)


def test_an_unreachable_endpoint_is_unavailable(gcp_target: GcpTarget) -> None:
    uri = SecretURI.parse(f"gcp://project/name?endpoint=http://127.0.0.1:{free_port()}")
    store = GcpStore(uri, credentials=BearerToken(token="unused"))
    with pytest.raises(StoreUnavailable) as error:
        store.create(canary())
    assert "127.0.0.1" in str(error.value)
