"""The store contract: every adapter behaves as AWS Secrets Manager's staging labels do, and never reveals a value.

Written once and run against every kind of store. Each kind's fixture ``<kind>_store_factory`` (in
tests/fixtures/<kind>_store.py) returns ``make()``, a store for a fresh secret that does not exist yet;
``<kind>_denied_store`` returns ``make()`` giving (a view of an existing secret with credentials that may not change
it, a view that may), and ``<kind>_unreachable_store`` a store nobody answers for. Every failure is asserted as its
exact error type, one per condition. Run one kind with ``pytest tests/test_store_contract.py -k local``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import pytest

from stores import SecretStore, Stage
from stores.errors import (
    InvalidRotationId,
    SecretExists,
    SecretNotFound,
    StagingConflict,
    StorePermissionDenied,
    StoreUnavailable,
    VersionNotFound,
)
from tests.leaks import error_text

KINDS = ["local", "aws", "vault", "k8s", "azure", "gcp"]


@pytest.fixture(params=KINDS)
def make_store(request: pytest.FixtureRequest) -> Callable[[], SecretStore]:
    return request.getfixturevalue(f"{request.param}_store_factory")


@pytest.fixture
def store(make_store: Callable[[], SecretStore]) -> SecretStore:
    return make_store()


def new_value() -> str:
    """A canary value: if it shows up anywhere but a read, the test catches it."""
    return f"canary-{uuid.uuid4().hex}"


def new_rotation() -> str:
    return str(uuid.uuid4())


def stages(store: SecretStore) -> dict[Stage, list[str]]:
    """Which versions carry each stage, as the store describes it (a list, so that two holders show up)."""
    held: dict[Stage, list[str]] = {stage: [] for stage in Stage}
    for version in store.describe().versions:
        for stage in version.stages:
            held[stage].append(version.version_id)
    return held


def expect(store: SecretStore, current: str, previous: str | None = None, pending: str | None = None) -> None:
    assert stages(store) == {
        Stage.CURRENT: [current],
        Stage.PREVIOUS: [previous] if previous else [],
        Stage.PENDING: [pending] if pending else [],
    }


def rotate(store: SecretStore, value: str) -> str:
    """Stage and promote one new value; returns its version id."""
    rotation = new_rotation()
    version = store.stage(value, rotation)
    store.promote(rotation)
    return version


def test_create_then_read_current(store: SecretStore) -> None:
    value = new_value()
    version = store.create(value)
    assert store.read() == value
    assert store.read(Stage.CURRENT) == value
    assert store.read_version(version) == value
    expect(store, current=version)


def test_create_twice_is_refused_and_keeps_the_value(store: SecretStore) -> None:
    first = new_value()
    store.create(first)
    with pytest.raises(SecretExists):
        store.create(new_value())
    assert store.read() == first


def test_a_missing_secret_is_named_in_the_error(store: SecretStore) -> None:
    for call in (store.read, store.describe, lambda: store.read_version(new_rotation())):
        with pytest.raises(SecretNotFound) as error:
            call()
        assert store.uri.name in str(error.value)
    with pytest.raises(SecretNotFound):
        store.stage(new_value(), new_rotation())


def test_stage_then_read_pending_and_version(store: SecretStore) -> None:
    current, pending = new_value(), new_value()
    first = store.create(current)
    staged = store.stage(pending, new_rotation())
    assert store.read(Stage.PENDING) == pending
    assert store.read_version(staged) == pending
    assert store.read() == current
    expect(store, current=first, pending=staged)


def test_staging_the_same_rotation_twice_keeps_the_first_value(store: SecretStore) -> None:
    store.create(new_value())
    rotation, first, second = new_rotation(), new_value(), new_value()
    staged = store.stage(first, rotation)
    assert store.stage(second, rotation) == staged
    assert store.read(Stage.PENDING) == first
    assert second not in [store.read_version(v.version_id) for v in store.describe().versions]


def test_staging_while_another_rotation_is_pending_is_refused(store: SecretStore) -> None:
    first = store.create(new_value())
    holder, pending = new_rotation(), new_value()
    staged = store.stage(pending, holder)
    with pytest.raises(StagingConflict) as error:
        store.stage(new_value(), new_rotation())
    assert holder in str(error.value) or staged in str(error.value)
    assert store.read(Stage.PENDING) == pending
    expect(store, current=first, pending=staged)


def test_promote_moves_the_stages(store: SecretStore) -> None:
    old, new = new_value(), new_value()
    first = store.create(old)
    rotation = new_rotation()
    staged = store.stage(new, rotation)
    store.promote(rotation)
    expect(store, current=staged, previous=first)
    assert store.read() == new
    assert store.read(Stage.PREVIOUS) == old
    with pytest.raises(VersionNotFound):
        store.read(Stage.PENDING)


def test_promote_twice_changes_nothing(store: SecretStore) -> None:
    first = store.create(new_value())
    rotation = new_rotation()
    staged = store.stage(new_value(), rotation)
    store.promote(rotation)
    store.promote(rotation)
    expect(store, current=staged, previous=first)


def test_promoting_while_another_rotation_holds_pending_is_a_conflict_and_changes_nothing(store: SecretStore) -> None:
    first = store.create(new_value())
    staged = store.stage(new_value(), new_rotation())
    with pytest.raises(StagingConflict):
        store.promote(new_rotation())
    expect(store, current=first, pending=staged)


def test_promoting_a_rotation_never_staged_is_not_found_and_changes_nothing(store: SecretStore) -> None:
    first = store.create(new_value())
    with pytest.raises(VersionNotFound, match="stage it"):
        store.promote(new_rotation())
    expect(store, current=first)


def test_revert_restores_current_and_previous_exactly(store: SecretStore) -> None:
    oldest, middle = new_value(), new_value()
    first = store.create(oldest)
    second = rotate(store, middle)
    previous_before = store.describe().version_at(Stage.PREVIOUS)
    assert previous_before == first
    rotation = new_rotation()
    store.stage(new_value(), rotation)
    store.promote(rotation)
    store.revert(rotation, previous_before)
    expect(store, current=second, previous=first)
    assert store.read() == middle
    assert store.read(Stage.PREVIOUS) == oldest
    store.revert(rotation, previous_before)
    expect(store, current=second, previous=first)


def test_revert_of_the_first_rotation_leaves_no_previous(store: SecretStore) -> None:
    value = new_value()
    first = store.create(value)
    rotation = new_rotation()
    store.stage(new_value(), rotation)
    store.promote(rotation)
    store.revert(rotation, None)
    expect(store, current=first)
    assert store.read() == value


def test_revert_of_a_never_promoted_rotation_drops_pending_only(store: SecretStore) -> None:
    first = store.create(new_value())
    current = new_value()
    second = rotate(store, current)
    rotation = new_rotation()
    store.stage(new_value(), rotation)
    store.revert(rotation, first)
    expect(store, current=second, previous=first)
    assert store.read() == current


def test_discard_is_idempotent_and_frees_pending(store: SecretStore) -> None:
    first = store.create(new_value())
    rotation = new_rotation()
    store.stage(new_value(), rotation)
    store.discard(rotation)
    store.discard(rotation)
    store.discard(new_rotation())
    expect(store, current=first)
    later, value = new_rotation(), new_value()
    staged = store.stage(value, later)
    assert store.read(Stage.PENDING) == value
    expect(store, current=first, pending=staged)


def test_discard_does_not_touch_current(store: SecretStore) -> None:
    old, new = new_value(), new_value()
    first = store.create(old)
    rotation = new_rotation()
    staged = store.stage(new, rotation)
    store.promote(rotation)
    store.discard(rotation)
    expect(store, current=staged, previous=first)
    assert store.read() == new
    assert store.read(Stage.PREVIOUS) == old


def test_describe_and_repr_never_contain_a_value(store: SecretStore) -> None:
    values = [new_value() for _ in range(3)]
    store.create(values[0])
    rotate(store, values[1])
    store.stage(values[2], new_rotation())
    description = store.describe()
    shown = description.model_dump_json() + repr(description) + str(description) + repr(store) + str(store)
    assert len(description.versions) == 3
    for value in values:
        assert value not in shown


def test_no_error_message_contains_the_value(store: SecretStore) -> None:
    canary = new_value()
    with pytest.raises(SecretNotFound) as missing:
        store.stage(canary, new_rotation())
    assert canary not in error_text(missing.value)
    store.create(canary)
    rotation = new_rotation()
    store.stage(canary, rotation)
    failures: list[tuple[type[Exception], Callable[[], object]]] = [
        (SecretExists, lambda: store.create(canary)),
        (StagingConflict, lambda: store.stage(canary, new_rotation())),
        (VersionNotFound, lambda: store.read(Stage.PREVIOUS)),
        (VersionNotFound, lambda: store.read_version(new_rotation())),
        (StagingConflict, lambda: store.promote(new_rotation())),
        (InvalidRotationId, lambda: store.stage(canary, "")),
    ]
    for expected, failure in failures:
        with pytest.raises(expected) as error:
            failure()
        assert canary not in error_text(error.value)


def test_list_contains_the_secret(store: SecretStore) -> None:
    store.create(new_value())
    assert store.uri.name in store.list()


def test_several_rotations_keep_one_version_per_stage(store: SecretStore) -> None:
    values = [new_value()]
    versions = [store.create(values[0])]
    for _ in range(4):
        values.append(new_value())
        versions.append(rotate(store, values[-1]))
        expect(store, current=versions[-1], previous=versions[-2])
        assert store.read() == values[-1]
        assert store.read(Stage.PREVIOUS) == values[-2]


def test_a_rotation_id_no_manager_can_use_is_bad_input_and_changes_nothing(store: SecretStore) -> None:
    first = store.create(new_value())
    for bad in ("", "x" * 200, "a b"):
        for call in (
            lambda bad=bad: store.stage(new_value(), bad),
            lambda bad=bad: store.promote(bad),
            lambda bad=bad: store.revert(bad, None),
            lambda bad=bad: store.discard(bad),
        ):
            with pytest.raises(InvalidRotationId, match="rotation id"):
                call()
    expect(store, current=first)


@pytest.mark.parametrize("recorded", ["unknown", "the restored version"])
def test_reverting_to_a_previous_version_the_store_does_not_have_changes_nothing(
    store: SecretStore, recorded: str
) -> None:
    """A wrong record (a journal from another secret, say) is shown to a person, never guessed at."""
    first = store.create(new_value())
    second = rotate(store, new_value())
    rotation = new_rotation()
    third = store.stage(new_value(), rotation)
    store.promote(rotation)
    previous = new_rotation() if recorded == "unknown" else second
    with pytest.raises(VersionNotFound, match="nothing was changed"):
        store.revert(rotation, previous)
    expect(store, current=third, previous=second)
    store.revert(rotation, first)  # what the journal of this rotation holds
    expect(store, current=second, previous=first)


def test_staging_a_rotation_whose_version_was_reverted_is_refused(store: SecretStore) -> None:
    first = store.create(new_value())
    rotation = new_rotation()
    store.stage(new_value(), rotation)
    store.revert(rotation, None)
    with pytest.raises(StagingConflict, match="new rotation"):
        store.stage(new_value(), rotation)
    assert store.describe().version_at(Stage.CURRENT) == first
    assert store.describe().version_at(Stage.PENDING) is None


def leave_pending_on_current(store: SecretStore) -> None:
    """The state AWS's rotation functions finish in (AWSPENDING left on the AWSCURRENT version, which AWS treats as
    a finished rotation), written in the store's own layout with its own primitive."""
    with store._session(write=True):
        snapshot = store._snapshot(repair=True)
        store._write_stages(snapshot, snapshot.stages.but(pending=snapshot.stages.current))


def test_a_rotation_starts_from_pending_left_on_current(store: SecretStore) -> None:
    first = store.create(new_value())
    second = rotate(store, new_value())
    leave_pending_on_current(store)
    assert stages(store) == {Stage.CURRENT: [second], Stage.PENDING: [second], Stage.PREVIOUS: [first]}
    store.discard(second)  # what a rollback of that finished rotation would do: CURRENT stays
    assert store.describe().version_at(Stage.CURRENT) == second
    rotation, value = new_rotation(), new_value()
    third = store.stage(value, rotation)
    expect(store, current=second, previous=first, pending=third)
    store.promote(rotation)
    expect(store, current=third, previous=second)
    assert store.read() == value


def test_promoting_again_finishes_a_rotation_that_left_pending_on_current(store: SecretStore) -> None:
    first = store.create(new_value())
    rotation = new_rotation()
    second = store.stage(new_value(), rotation)
    store.promote(rotation)
    leave_pending_on_current(store)
    store.promote(rotation)
    expect(store, current=second, previous=first)


def test_prune_destroys_the_versions_no_stage_points_to(store: SecretStore) -> None:
    values = [new_value() for _ in range(5)]
    versions = [store.create(values[0]), *(rotate(store, value) for value in values[1:4])]
    dropped = new_rotation()
    store.stage(values[4], dropped)
    store.revert(dropped, None)
    pruned = store.prune(keep=1)
    kept = [v.version_id for v in store.describe().versions]
    assert versions[2] in kept and versions[3] in kept  # PREVIOUS and CURRENT
    assert len(kept) <= 3 and not {*pruned} & {*kept}
    assert store.prune() == [v for v in kept if v not in versions[2:]]
    expect(store, current=versions[3], previous=versions[2])
    assert store.read() == values[3] and store.read(Stage.PREVIOUS) == values[2]


def test_delete_removes_the_secret_with_every_version_and_frees_its_name(store: SecretStore) -> None:
    first = new_value()
    store.create(first)
    rotate(store, new_value())
    store.stage(new_value(), new_rotation())
    assert store.delete() is True
    assert store.uri.name not in store.list()
    for call in (store.read, store.describe):
        with pytest.raises(SecretNotFound):
            call()
    assert store.delete() is False  # already gone: nothing to do
    again = new_value()
    version = store.create(again)  # the name is free: a restore rolled back can be run again
    assert store.read() == again
    expect(store, current=version)


def test_deleting_a_secret_leaves_the_others_of_its_place(make_store: Callable[[], SecretStore]) -> None:
    doomed, kept = make_store(), make_store()
    doomed.create(new_value())
    value = new_value()
    version = kept.create(value)
    doomed.delete()
    assert kept.read() == value
    expect(kept, current=version)


@pytest.fixture
def make_denied(request: pytest.FixtureRequest) -> Callable[[], tuple[SecretStore, SecretStore]]:
    return request.getfixturevalue(f"{request.node.callspec.params['kind']}_denied_store")


@pytest.mark.parametrize("kind", KINDS)
def test_credentials_that_may_not_change_the_secret_are_denied_and_nothing_changes(
    kind: str, make_denied: Callable[[], tuple[SecretStore, SecretStore]]
) -> None:
    denied, admin = make_denied()
    before = admin.describe()
    value = new_value()
    with pytest.raises(StorePermissionDenied) as error:
        denied.stage(value, new_rotation())
    assert denied.uri.name in str(error.value) and value not in error_text(error.value)
    assert admin.describe() == before


@pytest.mark.parametrize("kind", KINDS)
def test_a_store_nobody_answers_for_is_unavailable_within_seconds(kind: str, request: pytest.FixtureRequest) -> None:
    store = request.getfixturevalue(f"{kind}_unreachable_store")
    value = new_value()
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as error:
        store.stage(value, new_rotation())
    assert time.monotonic() - started < 15
    assert value not in error_text(error.value)
