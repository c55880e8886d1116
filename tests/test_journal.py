"""The rotation journal on both backends (an SQLite file, PostgreSQL): one rotation per secret, leases, named steps,
the compensation stack's order; and a journal file that is private and never confused with another file."""

from __future__ import annotations

import sqlite3
import stat
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import make_url

from errors import NotFound, Refused
from rotation.journal import (
    Journal,
    Lease,
    LeaseLost,
    NotAJournal,
    RotationInProgress,
    RotationNotFound,
    RotationState,
    UndoEntry,
)


@pytest.fixture(params=["sqlite", "postgresql"])
def journal(request: pytest.FixtureRequest, tmp_path: Path) -> Journal:
    if request.param == "sqlite":
        return Journal(tmp_path / "state" / "journal.db")
    return Journal(request.getfixturevalue("pg_database"))


def begin(journal: Journal, secret: str = "aws://x?region=eu-west-1", seconds: float = 30) -> Lease:
    lease = Lease.new(f"{time.monotonic_ns():036d}"[-36:], "run-1", seconds)
    journal.begin(
        secret=secret,
        runbook="jwt-signing-key",
        started_by="alice",
        parameters={"secret": secret},
        consumers=[],
        versions={"current": "v1", "previous": None},
        lease=lease,
    )
    return lease


def test_a_second_rotation_of_the_same_secret_is_refused_with_a_way_out(journal: Journal) -> None:
    first = begin(journal)
    with pytest.raises(RotationInProgress) as refused:
        begin(journal)
    message = str(refused.value)
    assert first.rotation_id in message and "is alive" in message
    assert f"rotate resume {first.rotation_id}" in message and f"rotate rollback {first.rotation_id}" in message
    other = begin(journal, "aws://y?region=eu-west-1")
    assert other.rotation_id != first.rotation_id
    assert journal.get(first.rotation_id).versions == {"current": "v1", "previous": None}


def test_a_selection_and_every_secret_it_covers_lock_each_other(journal: Journal, tmp_path: Path) -> None:
    """A restore holds its selection (``prod/*``): a rotation of a secret in it, or another selection sharing a
    secret with it, is refused until it ends; secrets and selections elsewhere are not."""
    store = f"local://{tmp_path}/store.db?secret="
    restore = begin(journal, store + "prod/*")
    for overlapping in ("prod/db", "prod/api/*", "*", "prod/*"):
        with pytest.raises(RotationInProgress) as refused:
            begin(journal, store + overlapping)
        assert f"rotation {restore.rotation_id} of {store}prod/*" in str(refused.value)
    elsewhere = [store + "staging/db", store + "production/*", f"local://{tmp_path}/other.db?secret=prod/db",
                 "aws://prod/db?region=eu-west-1"]  # fmt: skip
    for secret in elsewhere:
        begin(journal, secret)
    journal.end_run(restore, RotationState.COMPLETED)
    begin(journal, store + "prod/db")
    with pytest.raises(RotationInProgress, match="which shares secrets with"):
        begin(journal, store + "prod/*")


def test_overlapping_beginnings_at_the_same_moment_let_one_through(journal: Journal, tmp_path: Path) -> None:
    """Two workers beginning a selection and a secret it covers at once: different lock rows, one winner."""
    for round_ in range(15):
        store = f"local://{tmp_path}/store-{round_}.db?secret="
        together = threading.Barrier(2)

        def start(secret: str, together: threading.Barrier = together) -> bool:
            together.wait()
            try:
                begin(Journal(journal.location), secret)
            except RotationInProgress:
                return False
            return True

        with ThreadPoolExecutor(2) as pool:
            won = list(pool.map(start, (store + "prod/*", store + "prod/db")))
        assert won.count(True) == 1, f"round {round_}: {won}"


def test_only_a_finished_rotation_releases_its_secret(journal: Journal) -> None:
    first = begin(journal)
    journal.end_run(first, RotationState.FAILED, "after retire")
    with pytest.raises(RotationInProgress, match="its run has stopped"):
        begin(journal)
    taken = journal.take_over(first.rotation_id, again := Lease.new(first.rotation_id, "run-2"), "resume")
    assert taken.superseded == "run-1" and taken.record.state is RotationState.RUNNING
    journal.end_run(again, RotationState.COMPLETED)
    second = begin(journal)
    assert [r.id for r in journal.list(active_only=True)] == [second.rotation_id]


def test_a_live_lease_refuses_resume_and_rollback_until_it_expires(journal: Journal) -> None:
    owner = begin(journal, seconds=1)
    rescuer = Lease.new(owner.rotation_id, "run-2")
    for purpose in ("resume", "rollback"):
        with pytest.raises(Refused, match="is owned by flow run run-1, which is still alive"):
            journal.take_over(owner.rotation_id, rescuer, purpose)
    assert journal.renew(owner)
    time.sleep(1.2)  # the owner stopped renewing: it crashed
    assert journal.take_over(owner.rotation_id, rescuer, "rollback").superseded == "run-1"
    assert not journal.renew(owner)
    with pytest.raises(LeaseLost):
        journal.start_step(owner, "stage", "stage", {})


def test_a_step_keeps_its_first_detail_and_records_its_facts(journal: Journal) -> None:
    lease = begin(journal)
    journal.start_step(lease, "grace", "wait", {"due": "first"})
    journal.start_step(lease, "grace", "wait", {"due": "second"})  # a resumed run starts it again
    journal.complete_step(lease, "grace", {"due": "first"})
    journal.start_step(lease, "check", "check", {})
    steps = journal.steps(lease.rotation_id)
    assert list(steps) == ["grace", "check"]
    assert steps["grace"].detail == {"due": "first"} and steps["grace"].completed
    assert steps["grace"].facts == {"due": "first"} and not steps["check"].completed


@contextmanager
def transactions(journal: Journal) -> Iterator[list[int]]:
    """The transactions the block commits on the journal's database (both instances share one engine: read only
    through the journal under test inside the block)."""
    commits: list[int] = []

    def count(_conn: object) -> None:
        commits.append(1)

    sa.event.listen(journal._engine, "commit", count)
    try:
        yield commits
    finally:
        sa.event.remove(journal._engine, "commit", count)


def test_a_step_costs_one_transaction_and_a_look_is_written_with_the_next_change(journal: Journal) -> None:
    """What another process (a resumed run, ``rotate status``) sees of a run's steps, and what it costs the run."""
    lease = begin(journal)
    other = Journal(journal.location)  # another process's view: nothing of this instance's memory
    with transactions(journal) as commits:
        journal.start_step(lease, "check", "check", {}, write_ahead=False)
        journal.complete_step(lease, "check", {"version": "v1"})
        journal.start_step(lease, "stage", "stage", {}, undo=UndoEntry("discard_secret", {}))
    assert len(commits) == 1  # two steps: the look is written with the change's start
    seen = other.steps(lease.rotation_id)
    assert list(seen) == ["check", "stage"] and seen["check"].facts == {"version": "v1"}
    assert not seen["stage"].completed and [u.step for u in other.undos(lease.rotation_id)] == ["stage"]
    with transactions(journal) as commits:
        journal.complete_step(lease, "stage", "fingerprint")
        journal.start_step(lease, "verify", "verify", {}, write_ahead=False)
        journal.complete_step(lease, "verify", None)
    assert commits == [] and not other.steps(lease.rotation_id)["stage"].completed
    with transactions(journal) as commits:
        journal.end_run(lease, RotationState.COMPLETED)
    assert len(commits) == 1
    seen = other.steps(lease.rotation_id)
    assert seen["stage"].completed and seen["verify"].completed
    statuses = [(e.step, e.status) for e in other.events(lease.rotation_id)]
    assert statuses == [("rotation", "started"), ("check", "started"), ("check", "completed"),
                        ("stage", "started"), ("stage", "completed"), ("verify", "started"),
                        ("verify", "completed"), ("rotation", "completed")]  # fmt: skip


def test_what_was_deferred_is_written_by_the_lease_renewal_and_by_an_audit_record(journal: Journal) -> None:
    lease = begin(journal)
    journal.start_step(lease, "promote", "promote", {}, undo=UndoEntry("revert_secret", {}))
    journal.complete_step(lease, "promote", None)
    assert journal.renew(lease)
    journal.start_step(lease, "approve", "approve", {}, write_ahead=False)
    journal.record(lease.rotation_id, "approve", "waiting", flow_run="run-1")
    fresh = Journal(journal.location)
    assert fresh.steps(lease.rotation_id)["promote"].completed
    assert [e.status for e in fresh.events(lease.rotation_id)][-2:] == ["started", "waiting"]


def test_a_point_of_no_return_is_written_at_once(journal: Journal) -> None:
    lease = begin(journal)
    journal.start_step(lease, "approve-revoke", "approve-retire", {}, write_ahead=False)
    journal.complete_step(lease, "approve-revoke", {"decision": "approve"}, retire=True)
    fresh = Journal(journal.location)
    assert fresh.get(lease.rotation_id).retired_at is not None
    assert fresh.steps(lease.rotation_id)["approve-revoke"].completed
    with pytest.raises(ValueError, match="must be written before it acts"):
        journal.start_step(lease, "drop", "retire", {}, retire=True, write_ahead=False)


def test_a_run_that_lost_its_lease_never_writes_what_it_deferred(journal: Journal) -> None:
    owner = begin(journal, seconds=1)
    journal.start_step(owner, "check", "check", {}, write_ahead=False)
    journal.complete_step(owner, "check", {"stale": True})
    time.sleep(1.2)
    rescuer = Journal(journal.location)  # another process
    rescuer.take_over(owner.rotation_id, Lease.new(owner.rotation_id, "run-2"), "rollback")
    assert not journal.renew(owner)
    with pytest.raises(LeaseLost):
        journal.record(owner.rotation_id, "check", "waiting")
    assert rescuer.steps(owner.rotation_id) == {}
    assert "waiting" not in [e.status for e in rescuer.events(owner.rotation_id)]


def test_undos_run_newest_first_deferred_last_and_are_recorded_once(journal: Journal) -> None:
    lease = begin(journal)
    journal.start_step(lease, "stage", "stage", {}, undo=UndoEntry("discard_secret", {"n": 1}))
    restart = UndoEntry("restart_consumers", {"n": 2}, deferred=True, key="restart-consumers")
    journal.start_step(lease, "restart", "restart", {}, undo=restart)
    journal.start_step(lease, "promote", "promote", {}, undo=UndoEntry("revert_secret", {"n": 3}))
    journal.start_step(lease, "restart-again", "restart", {}, undo=restart)  # shared: recorded once
    journal.start_step(lease, "stage", "stage", {}, undo=UndoEntry("discard_secret", {"n": 99}))  # resumed
    undos = journal.undos(lease.rotation_id)
    assert [u.step for u in undos] == ["promote", "stage", "restart-consumers"]
    assert undos[1].kwargs == {"n": 1}
    journal.mark_undone(lease, "promote")
    assert [u.done for u in journal.undos(lease.rotation_id)] == [True, False, False]


def test_retirement_is_recorded_with_the_start_of_its_step(journal: Journal) -> None:
    lease = begin(journal)
    assert journal.get(lease.rotation_id).retired_at is None
    journal.start_step(lease, "drop-old-key", "retire", {}, retire=True)
    assert journal.get(lease.rotation_id).retired_at is not None
    with pytest.raises(Refused, match="point of no return"):
        journal.take_over(lease.rotation_id, Lease.new(lease.rotation_id, "run-2"), "rollback")


def test_a_rotation_refused_by_its_checks_is_forgotten(journal: Journal) -> None:
    lease = begin(journal)
    journal.start_step(lease, "check", "check", {})
    journal.forget(lease)
    assert journal.list() == []
    begin(journal)  # the secret is free


def test_an_unknown_rotation_is_named_with_the_journal(journal: Journal) -> None:
    with pytest.raises(RotationNotFound) as missing:
        journal.get("nope")
    assert f"no rotation nope in the journal {journal.display}" in str(missing.value)
    if journal.path is None:  # a PostgreSQL URL: its password is never shown
        assert ":***@" in journal.display
        assert make_url(journal.location).password not in str(missing.value)


def test_the_journal_file_and_its_folder_are_private(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "state" / "journal.db")
    assert stat.S_IMODE(journal.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(journal.path.parent.stat().st_mode) == 0o700


def test_reading_needs_a_journal_and_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="no rotation journal at"):
        Journal(tmp_path / "absent.db", create=False)
    assert not (tmp_path / "absent.db").exists()


@pytest.mark.parametrize("kind", ["another-sqlite-database", "a-store", "not-sqlite"])
def test_a_file_that_is_not_a_journal_is_refused_and_left_as_it_was(
    tmp_path: Path, local_store_factory, kind: str
) -> None:
    if kind == "a-store":
        store = local_store_factory()
        store.create("value-0123456789")
        path = Path(store.uri.location)
    else:
        path = tmp_path / "other.db"
        if kind == "not-sqlite":
            path.write_text("just some notes\n")
        else:
            db = sqlite3.connect(path)
            db.execute("CREATE TABLE notes (body TEXT)")
            db.commit()
            db.close()
    before = sorted((p.name, p.read_bytes()) for p in path.parent.iterdir())
    with pytest.raises(NotAJournal, match="is not a rotation journal"):
        Journal(path)
    assert sorted((p.name, p.read_bytes()) for p in path.parent.iterdir()) == before
