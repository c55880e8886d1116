"""The rotation journal: one rotation per secret, the compensation stack's order, durable marks."""

from __future__ import annotations

import time

import pytest

from rotation.journal import Journal, RotationInProgress, RotationNotFound, RotationState


@pytest.fixture
def journal(tmp_path) -> Journal:
    return Journal(tmp_path / "journal.db")


def test_a_second_rotation_of_the_same_secret_is_refused_with_a_way_out(journal: Journal) -> None:
    first = journal.begin("local:///s.db?secret=a", "jwt-signing-key", "alice", {})
    with pytest.raises(RotationInProgress) as refused:
        journal.begin("local:///s.db?secret=a", "jwt-signing-key", "bob", {})
    message = str(refused.value)
    assert first.id in message
    assert f"rotate resume {first.id}" in message
    assert f"rotate rollback {first.id}" in message
    other = journal.begin("local:///s.db?secret=b", "jwt-signing-key", "bob", {})
    assert other.id != first.id


def test_finishing_a_rotation_releases_the_secret(journal: Journal) -> None:
    first = journal.begin("aws://x", "jwt-signing-key", "alice", {})
    journal.set_state(first.id, RotationState.FAILED)
    with pytest.raises(RotationInProgress):
        journal.begin("aws://x", "jwt-signing-key", "alice", {})
    journal.set_state(first.id, RotationState.ROLLED_BACK)
    second = journal.begin("aws://x", "jwt-signing-key", "alice", {})
    assert [r.id for r in journal.list(active_only=True)] == [second.id]


def test_undos_run_newest_first_and_deferred_ones_last_and_are_recorded_once(journal: Journal) -> None:
    rid = journal.begin("aws://x", "r", "alice", {}).id
    journal.push_undo(rid, "1:stage", "tasks.secrets:discard_secret", {"n": 1}, deferred=False)
    journal.push_undo(rid, "restart", "tasks.consumers:restart_consumers", {"n": 2}, deferred=True)
    journal.push_undo(rid, "3:promote", "tasks.secrets:revert_secret", {"n": 3}, deferred=False)
    journal.push_undo(rid, "1:stage", "tasks.secrets:discard_secret", {"n": 99}, deferred=False)  # a resumed run
    undos = journal.undos(rid)
    assert [u.key for u in undos] == ["3:promote", "1:stage", "restart"]
    assert undos[1].kwargs == {"n": 1}
    journal.mark_undone(rid, "3:promote")
    assert [u.done for u in journal.undos(rid)] == [True, False, False]


def test_marks_and_due_times_keep_their_first_value(journal: Journal) -> None:
    rid = journal.begin("aws://x", "r", "alice", {}).id
    assert journal.mark(rid, "approve") == {}
    assert journal.mark(rid, "approve", {"approver": "bob"}) == {"approver": "bob"}
    assert journal.mark(rid, "approve", {"approver": "eve"}) == {"approver": "bob"}
    due = journal.due_time(rid, "wait", 60)
    time.sleep(0.01)
    assert journal.due_time(rid, "wait", 60) == due
    assert journal.record_facts(rid, {"a": 1}) == {"a": 1}
    assert journal.record_facts(rid, {"a": 2, "b": 3}) == {"a": 1, "b": 3}


def test_an_unknown_rotation_is_named(journal: Journal) -> None:
    with pytest.raises(RotationNotFound, match="no rotation nope"):
        journal.get("nope")


def test_marks_given_to_begin_are_recorded_with_the_rotation(journal: Journal) -> None:
    rid = journal.begin("aws://x", "r", "alice", {}, marks={"versions": {"current": "v1", "previous": None}}).id
    assert journal.mark(rid, "versions") == {"current": "v1", "previous": None}
