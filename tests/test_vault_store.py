"""Vault-specific behaviour of the Vault store, against the Vault protocol double (or a real Vault: VAULT_ADDR)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable

import pytest

from stores import SecretStore, Stage, open_store
from stores.errors import (
    InvalidRotationId,
    InvalidStoreURI,
    SecretNotFound,
    StagingConflict,
    StorePermissionDenied,
    VersionNotFound,
)
from stores.vault import VaultStore
from tests.fixtures.vault_store import VaultTarget
from tests.leaks import canary, error_text

# Against a real Vault (VAULT_ADDR set) these need roles and policies set up there by hand.
double_only = pytest.mark.skipif(bool(os.environ.get("VAULT_ADDR")), reason="needs roles set up in the real Vault")


def latest(store: VaultStore) -> dict[str, str]:
    """Vault's latest version, read as `vault kv get`, Vault Agent and the CSI provider read it (no version given)."""
    response = store.client.secrets.kv.v2.read_secret_version(
        path=store.path, mount_point=store.mount, raise_on_deleted_version=True
    )
    return response["data"]["data"]


def test_value_and_stages_are_laid_out_as_documented(vault_store_factory: Callable[[], SecretStore]) -> None:
    store = vault_store_factory()
    assert isinstance(store, VaultStore)
    value, staged_value, rotation = canary(), canary(), str(uuid.uuid4())
    first = store.create(value)
    store.stage(staged_value, rotation)
    kv = store.client.secrets.kv.v2
    meta = kv.read_secret_metadata(path=store.path, mount_point=store.mount)["data"]
    custom = meta["custom_metadata"]
    assert custom["stage.current"] == first == "kv-1"
    assert custom["stage.pending"] == rotation
    assert custom[f"version.{rotation}"] == "2"
    assert custom["version.kv-1"] == "1,3"  # CURRENT's value, written again on top of the staged one
    assert meta["current_version"] == 3
    pending = kv.read_secret_version(path=store.path, version=2, mount_point=store.mount, raise_on_deleted_version=True)
    assert pending["data"]["data"] == {"value": staged_value, "rotation_id": rotation}
    assert latest(store) == {"value": value, "copy_of": first}


def test_vaults_latest_version_holds_current_after_every_call(vault_store_factory: Callable[[], SecretStore]) -> None:
    store = vault_store_factory()
    assert isinstance(store, VaultStore)
    values = [canary() for _ in range(5)]
    first = store.create(values[0])
    assert latest(store)["value"] == values[0]
    promoted = str(uuid.uuid4())
    store.stage(values[1], promoted)
    assert latest(store)["value"] == values[0]
    store.promote(promoted)
    assert latest(store)["value"] == values[1]
    reverted = str(uuid.uuid4())
    store.stage(values[2], reverted)
    store.promote(reverted)
    assert latest(store)["value"] == values[2]
    store.revert(reverted, None)
    assert latest(store)["value"] == values[1]
    store.discard(reverted)
    assert latest(store)["value"] == values[1]
    discarded = str(uuid.uuid4())
    store.stage(values[3], discarded)
    store.discard(discarded)
    assert latest(store)["value"] == values[1]
    dropped = str(uuid.uuid4())
    store.stage(values[4], dropped)
    store.revert(dropped, first)
    assert latest(store)["value"] == values[1]
    # Each version id still names the value it was given, however many Vault versions hold it.
    assert store.read_version(first) == values[0]
    assert store.read_version(promoted) == values[1]
    assert store.read_version(dropped) == values[4]
    assert [v.version_id for v in store.describe().versions] == [first, promoted, dropped]


class Crash(Exception):
    """The worker died: raised instead of one write, so that the write never happens."""


def crash_before_write(store: VaultStore, monkeypatch: pytest.MonkeyPatch, writes_done: int) -> None:
    """Let ``writes_done`` writes (data or metadata) through, then die before the next one."""
    done = 0

    def counted(method: Callable[..., object]) -> Callable[..., object]:
        def write(*args: object, **kwargs: object) -> object:
            nonlocal done
            if done == writes_done:
                raise Crash
            done += 1
            return method(*args, **kwargs)

        return write

    monkeypatch.setattr(store, "_write", counted(store._write))
    monkeypatch.setattr(store, "_set_custom", counted(store._set_custom))


@pytest.mark.parametrize("writes_done", [1, 2], ids=["after-the-staged-write", "before-recording-it"])
@pytest.mark.parametrize("next_call", ["resume", "roll-back"])
def test_a_crash_inside_stage_is_repaired_by_the_next_call(
    vault_store_factory: Callable[[], SecretStore],
    monkeypatch: pytest.MonkeyPatch,
    writes_done: int,
    next_call: str,
) -> None:
    store = vault_store_factory()
    assert isinstance(store, VaultStore)
    current, staged = canary(), canary()
    first = store.create(current)
    rotation = str(uuid.uuid4())
    crash_before_write(store, monkeypatch, writes_done)
    with pytest.raises(Crash):
        store.stage(staged, rotation)
    after = open_store(store.uri)
    assert isinstance(after, VaultStore)
    if next_call == "resume":
        assert after.stage(canary(), rotation) == rotation
        assert after.read(Stage.PENDING) == staged
        assert latest(after)["value"] == current
        after.promote(rotation)
        assert latest(after)["value"] == staged
    else:
        after.discard(rotation)
        assert latest(after)["value"] == current
        assert [(v.version_id, v.stages) for v in after.describe().versions] == [(first, (Stage.CURRENT,))]


@pytest.mark.parametrize("step", ["promote", "revert"])
@pytest.mark.parametrize("next_call", ["resume", "roll-back"])
def test_a_crash_between_the_write_and_its_record_is_repaired_by_the_next_call(
    vault_store_factory: Callable[[], SecretStore], monkeypatch: pytest.MonkeyPatch, step: str, next_call: str
) -> None:
    store = vault_store_factory()
    assert isinstance(store, VaultStore)
    old, new = canary(), canary()
    first = store.create(old)
    rotation = str(uuid.uuid4())
    store.stage(new, rotation)
    if step == "revert":
        store.promote(rotation)
    crash_before_write(store, monkeypatch, writes_done=1)
    with pytest.raises(Crash):
        store.promote(rotation) if step == "promote" else store.revert(rotation, None)
    after = open_store(store.uri)
    assert isinstance(after, VaultStore)
    promoting = (step == "promote") == (next_call == "resume")
    if promoting:
        after.promote(rotation)
    else:
        after.revert(rotation, None)
    assert latest(after)["value"] == (new if promoting else old)
    assert after.describe().version_at(Stage.CURRENT) == (rotation if promoting else first)
    assert after.read() == latest(after)["value"]


def test_a_secret_staged_by_the_older_layout_gets_current_back_as_latest(
    vault_store_factory: Callable[[], SecretStore],
) -> None:
    store = vault_store_factory()
    assert isinstance(store, VaultStore)
    current, staged, rotation = canary(), canary(), str(uuid.uuid4())
    store.create(current)
    kv = store.client.secrets.kv.v2
    # What the previous version of this store left: the staged value as Vault's latest version.
    kv.create_or_update_secret(
        path=store.path, secret={"value": staged, "rotation_id": rotation}, cas=1, mount_point=store.mount
    )
    custom = {"stage.current": "kv-1", "stage.pending": rotation, f"version.{rotation}": "2"}
    kv.update_metadata(path=store.path, custom_metadata=custom, mount_point=store.mount)
    assert store.stage(canary(), rotation) == rotation
    assert latest(store)["value"] == current
    assert store.read(Stage.PENDING) == staged


def test_a_latest_version_written_outside_the_store_is_refused_not_overwritten(
    vault_store_factory: Callable[[], SecretStore],
) -> None:
    store = vault_store_factory()
    assert isinstance(store, VaultStore)
    first_value = canary()
    store.create(first_value)
    kv = store.client.secrets.kv.v2
    outside = canary()
    kv.create_or_update_secret(path=store.path, secret={"value": outside}, cas=1, mount_point=store.mount)
    with pytest.raises(StagingConflict) as error:
        store.stage(canary(), str(uuid.uuid4()))
    assert "kv-2" in str(error.value) and outside not in error_text(error.value)
    assert latest(store) == {"value": outside}
    meta = kv.read_secret_metadata(path=store.path, mount_point=store.mount)["data"]
    assert meta["current_version"] == 2 and "stage.pending" not in meta["custom_metadata"]
    kv.delete_secret_versions(path=store.path, versions=[2], mount_point=store.mount)  # what the error advises
    rotation = str(uuid.uuid4())
    store.stage(canary(), rotation)
    assert latest(store)["value"] == store.read() == first_value


def test_many_rotations_stay_within_vaults_version_and_metadata_limits(
    vault_store_factory: Callable[[], SecretStore],
) -> None:
    """Vault keeps 10 versions by default and 64 custom-metadata keys: stages stay readable through many rotations."""
    store = vault_store_factory()
    assert isinstance(store, VaultStore)
    previous, current = None, canary()
    store.create(current)
    for n in range(24):
        rotation, value = str(uuid.uuid4()), canary()
        store.stage(value, rotation)
        if n % 4 == 3:
            store.discard(rotation)  # CURRENT keeps its id and gains a Vault version
        else:
            store.promote(rotation)
            previous, current = current, value
        assert latest(store)["value"] == store.read() == current
        assert store.read(Stage.PREVIOUS) == previous
    meta = store.client.secrets.kv.v2.read_secret_metadata(path=store.path, mount_point=store.mount)["data"]
    assert min(int(n) for n in meta["versions"]) > 1  # Vault dropped the oldest versions meanwhile
    custom = meta["custom_metadata"]
    assert len([k for k in custom if k.startswith("version.")]) <= 16 + 3  # the unstaged map is pruned
    assert len(custom) <= 64 and all(len(v) <= 512 for v in custom.values())
    ids = [v.version_id for v in store.describe().versions]
    assert len(ids) == len(set(ids))  # a value written again as the latest is still one version


def test_a_writer_in_between_makes_stage_fail_with_a_conflict_and_change_nothing(
    vault_store_factory: Callable[[], SecretStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = vault_store_factory()
    assert isinstance(store, VaultStore)
    store.create(canary())
    other_value, mine = canary(), canary()
    real_state = store._state

    def state_then_another_writer() -> object:
        seen = real_state()
        # Another writer (a human with the vault CLI, say) writes a version right after this store read.
        store.client.secrets.kv.v2.create_or_update_secret(
            path=store.path, secret={"value": other_value}, cas=seen.latest, mount_point=store.mount
        )
        monkeypatch.setattr(store, "_state", real_state)
        return seen

    monkeypatch.setattr(store, "_state", state_then_another_writer)
    with pytest.raises(StagingConflict) as error:
        store.stage(mine, str(uuid.uuid4()))
    assert store.uri.display in str(error.value)
    assert mine not in error_text(error.value) and other_value not in error_text(error.value)
    meta = store.client.secrets.kv.v2.read_secret_metadata(path=store.path, mount_point=store.mount)["data"]
    assert meta["current_version"] == 2  # the other writer's version, and no version of ours
    assert "stage.pending" not in (meta["custom_metadata"] or {})
    with pytest.raises(VersionNotFound):
        store.read(Stage.PENDING)


def test_a_metadata_change_in_between_makes_promote_fail_and_change_nothing(
    vault_store_factory: Callable[[], SecretStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = vault_store_factory()
    assert isinstance(store, VaultStore)
    first = store.create(canary())
    rotation = str(uuid.uuid4())
    store.stage(canary(), rotation)
    real_state = store._state

    def state_then_metadata_edit() -> object:
        seen = real_state()
        custom = {**seen.custom, "owner": "someone-else"}
        store.client.secrets.kv.v2.update_metadata(path=store.path, custom_metadata=custom, mount_point=store.mount)
        monkeypatch.setattr(store, "_state", real_state)
        return seen

    monkeypatch.setattr(store, "_state", state_then_metadata_edit)
    with pytest.raises(StagingConflict):
        store.promote(rotation)
    description = store.describe()
    assert description.version_at(Stage.CURRENT) == first
    assert description.version_at(Stage.PENDING) == rotation


def test_a_refused_token_is_permission_denied_and_names_the_secret(
    vault_store_factory: Callable[[], SecretStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = vault_store_factory()
    value = canary()
    store.create(value)
    monkeypatch.setenv("VAULT_TOKEN", "not-a-valid-token")
    refused = open_store(store.uri)
    for call in (refused.read, lambda: refused.stage(value, str(uuid.uuid4())), refused.describe):
        with pytest.raises(StorePermissionDenied) as error:
            call()
        assert store.uri.name in str(error.value)
        assert value not in error_text(error.value)


@double_only
def test_a_read_only_token_cannot_stage_and_nothing_changes(
    vault_store_factory: Callable[[], SecretStore], vault_env: VaultTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = vault_store_factory()
    first = store.create(canary())
    monkeypatch.setenv("VAULT_TOKEN", vault_env.double.issue_token("read"))
    reader = open_store(store.uri)
    assert reader.describe().version_at(Stage.CURRENT) == first
    with pytest.raises(StorePermissionDenied):
        reader.stage(canary(), str(uuid.uuid4()))
    assert [v.version_id for v in reader.describe().versions] == [first]


def test_a_wrong_mount_is_named(vault_env: VaultTarget) -> None:
    store = open_store(f"vault://no-such-mount-{uuid.uuid4().hex[:6]}/auth/jwt")
    with pytest.raises((SecretNotFound, StorePermissionDenied)) as error:
        store.read()
    assert store.uri.location in str(error.value)
    assert "mount" in str(error.value)


def test_a_missing_secret_is_not_found_and_names_it(vault_store_factory: Callable[[], SecretStore]) -> None:
    store = vault_store_factory()
    with pytest.raises(SecretNotFound) as error:
        store.read()
    assert store.uri.display in str(error.value)
    with pytest.raises(SecretNotFound):
        store.promote(str(uuid.uuid4()))


def test_a_secret_written_by_another_tool_is_adopted(vault_store_factory: Callable[[], SecretStore]) -> None:
    store = vault_store_factory()
    assert isinstance(store, VaultStore)
    kv = store.client.secrets.kv.v2
    old, current = canary(), canary()
    kv.create_or_update_secret(path=store.path, secret={"value": old}, mount_point=store.mount)
    kv.create_or_update_secret(path=store.path, secret={"value": current}, mount_point=store.mount)
    assert store.read() == current
    rotation = str(uuid.uuid4())
    store.stage(canary(), rotation)
    assert store.read() == current
    assert latest(store)["value"] == current  # the staged version is not Vault's latest
    store.promote(rotation)
    assert store.describe().version_at(Stage.PREVIOUS) == "kv-2"


def test_discard_destroys_the_staged_version(vault_store_factory: Callable[[], SecretStore]) -> None:
    store = vault_store_factory()
    assert isinstance(store, VaultStore)
    store.create(canary())
    rotation = str(uuid.uuid4())
    store.stage(canary(), rotation)
    store.discard(rotation)
    meta = store.client.secrets.kv.v2.read_secret_metadata(path=store.path, mount_point=store.mount)["data"]
    assert meta["versions"]["2"]["destroyed"] is True
    assert meta["current_version"] == 3 and not meta["versions"]["3"]["destroyed"]


@double_only
def test_approle_login(
    vault_env: VaultTarget, vault_store_factory: Callable[[], SecretStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = vault_store_factory()
    value = canary()
    store.create(value)
    role_id, secret_id = vault_env.double.add_approle()
    monkeypatch.delenv("VAULT_TOKEN")
    monkeypatch.setenv("VAULT_ROLE_ID", role_id)
    monkeypatch.setenv("VAULT_SECRET_ID", secret_id)
    assert open_store(store.uri).read() == value
    monkeypatch.setenv("VAULT_SECRET_ID", "wrong")
    with pytest.raises(StorePermissionDenied) as error:
        open_store(store.uri).read()
    assert "AppRole" in str(error.value)


@double_only
def test_kubernetes_auth_reads_the_service_account_token(
    vault_env: VaultTarget, vault_store_factory: Callable[[], SecretStore], monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    store = vault_store_factory()
    value = canary()
    store.create(value)
    jwt_file = tmp_path / "token"
    jwt_file.write_text("service-account-jwt\n")
    vault_env.double.add_kubernetes_role("rotation", "service-account-jwt")
    monkeypatch.delenv("VAULT_TOKEN")
    monkeypatch.setenv("VAULT_K8S_ROLE", "rotation")
    monkeypatch.setenv("VAULT_K8S_TOKEN_PATH", str(jwt_file))
    assert open_store(store.uri).read() == value


def test_bad_configuration_is_refused_clearly(vault_env: VaultTarget, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InvalidStoreURI, match="namespace"):
        open_store("vault://secret/auth/jwt?region=eu")
    monkeypatch.delenv("VAULT_ADDR")
    with pytest.raises(StorePermissionDenied, match="VAULT_ADDR"):
        open_store("vault://secret/auth/jwt")
    with pytest.raises(InvalidRotationId, match="rotation id"):
        monkeypatch.setenv("VAULT_ADDR", vault_env.address)
        open_store("vault://secret/auth/jwt").stage("x", "kv-3")
