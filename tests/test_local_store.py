"""What only the local store promises: a private key file, ciphertext on disk, and safety across processes and crashes.

The behaviour every store shares is in test_store_contract.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import multiprocessing
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from typer.testing import CliRunner

from cli.app import app
from rotation.journal import Journal
from stores import Stage, open_store
from stores.errors import InvalidStoreURI, StagingConflict, StorePermissionDenied, VersionNotFound
from stores.local import LocalKeyError, LocalStore, NotAStoreFile
from stores.uri import SecretURI
from tests.leaks import canary, error_text

ROOT = Path(__file__).resolve().parent.parent


def uri(path: Path, secret: str = "db-password", **options: str) -> str:
    query = "".join(f"&{name}={value}" for name, value in options.items())
    return f"local://{path}?secret={secret}{query}"


def test_key_file_and_folder_are_created_private_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "new" / "folder" / "store.db"
    old_umask = os.umask(0)
    try:
        store = open_store(uri(path))
        value = canary()
        store.create(value)
    finally:
        os.umask(old_umask)
    key = path.with_name("store.db.key")
    assert key.stat().st_mode & 0o777 == 0o600
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert open_store(uri(path)).read() == value
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_a_key_file_others_can_read_is_refused_and_nothing_changes(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = open_store(uri(path))
    store.create(canary())
    key = path.with_name("store.db.key")
    key.chmod(0o644)
    for call in (store.read, lambda: store.stage(canary(), "r1")):
        with pytest.raises(StorePermissionDenied) as error:
            call()
        assert f"chmod 600 {key}" in str(error.value)
    key.chmod(0o600)
    assert store.describe().version_at(Stage.PENDING) is None


def test_the_key_option_names_another_key_file(tmp_path: Path) -> None:
    key = tmp_path / "keys" / "rotate.key"
    store = open_store(uri(tmp_path / "store.db", key=str(key)))
    value = canary()
    store.create(value)
    assert key.stat().st_mode & 0o777 == 0o600
    assert not (tmp_path / "store.db.key").exists()
    assert store.read() == value


def test_values_on_disk_are_ciphertext_wal_included(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = open_store(uri(path, secret="smtp-password"))
    values = [canary() for _ in range(4)]
    store.create(values[0])
    # A second open connection keeps SQLite from folding the WAL into the main file when the store's closes.
    holder = sqlite3.connect(path)
    try:
        holder.execute("SELECT count(*) FROM versions").fetchone()
        for number, value in enumerate(values[1:]):
            store.stage(value, f"rotation-{number}")
            store.promote(f"rotation-{number}")
        wal = Path(f"{path}-wal").read_bytes()
        assert b"smtp-password" in wal  # the WAL does hold the writes...
        for value in values:
            assert value.encode() not in wal  # ...but not one value in clear
    finally:
        holder.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("store.db") and p.is_file())
    assert b"smtp-password" in raw
    for value in values:
        assert value.encode() not in raw


def test_a_wrong_key_gives_a_clear_error_naming_the_key_file(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    value = canary()
    open_store(uri(path)).create(value)
    other_key = tmp_path / "other.key"
    open_store(uri(tmp_path / "other.db", key=str(other_key))).create(canary())
    with pytest.raises(LocalKeyError) as error:
        open_store(uri(path, key=str(other_key))).read()
    message = str(error.value)
    assert str(other_key) in message and "db-password" in message
    assert value not in message


def test_a_ciphertext_moved_to_another_secret_does_not_decrypt(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    open_store(uri(path, secret="a")).create(canary())
    open_store(uri(path, secret="b")).create(canary())
    with sqlite3.connect(path) as db:
        db.execute(
            "UPDATE versions SET (ciphertext, nonce) = "
            "(SELECT ciphertext, nonce FROM versions WHERE secret = 'a') WHERE secret = 'b'"
        )
    with pytest.raises(LocalKeyError):
        open_store(uri(path, secret="b")).read()


def test_a_missing_key_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = open_store(uri(path))
    store.create(canary())
    path.with_name("store.db.key").unlink()
    with pytest.raises(LocalKeyError, match="missing"):
        store.read()


def test_reading_a_store_that_does_not_exist_creates_nothing(tmp_path: Path) -> None:
    store = open_store(uri(tmp_path / "absent" / "store.db"))
    assert store.list() == []
    assert not (tmp_path / "absent").exists()


@pytest.mark.parametrize(
    "bad",
    ["local:///tmp/store.db?secret=s&keyfile=/tmp/k", "local:///tmp/store.db?secret=s&key=relative.key"],
)
def test_bad_options_are_refused(bad: str) -> None:
    with pytest.raises(InvalidStoreURI):
        open_store(bad)


# -- what it refuses ------------------------------------------------------------------------------------------------


def on_disk(folder: Path) -> dict[str, str]:
    """Every file in ``folder`` with a hash of its bytes: what "nothing changed on disk" compares."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def _other_database(path: Path) -> None:
    with closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total TEXT)")
        db.execute("INSERT INTO invoices (total) VALUES ('12.50')")
        db.commit()


@pytest.mark.parametrize(
    "make",
    [_other_database, lambda path: Journal(path), lambda path: path.write_text("not a database at all\n")],
    ids=["another-sqlite-database", "a-rotation-journal", "a-text-file"],
)
def test_a_file_that_is_not_a_store_is_refused_and_left_byte_for_byte(tmp_path: Path, make: Callable) -> None:
    path = tmp_path / "data.db"
    make(path)
    before = on_disk(tmp_path)
    store = open_store(uri(path))
    calls = (store.describe, store.read, store.list, lambda: store.create(canary()), lambda: store.prune())
    for call in [*calls, lambda: store.stage(canary(), "r1"), lambda: store.promote("r1")]:
        with pytest.raises(NotAStoreFile, match="is not a secret store of this tool"):
            call()
    result = CliRunner().invoke(app, ["describe", uri(path)])
    assert result.exit_code == 1 and "not a secret store" in result.output
    assert on_disk(tmp_path) == before  # no table added, no switch to WAL, no -wal/-shm or key file left beside it


def test_no_new_key_is_made_for_a_store_that_holds_versions(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    open_store(uri(path, secret="a")).create(canary())
    path.with_name("store.db.key").unlink()  # lost, say, in a copy of the folder that left the key behind
    before = on_disk(tmp_path)
    for call in (lambda: open_store(uri(path, secret="b")).create(canary()), open_store(uri(path, secret="a")).read):
        with pytest.raises(LocalKeyError, match="missing: restore it from your backup"):
            call()
    assert on_disk(tmp_path) == before


def test_a_stage_pointer_edited_in_the_file_is_detected_not_served(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = open_store(uri(path))
    first = store.create(canary())
    rotate_to = canary()
    store.stage(rotate_to, "r1")
    store.promote("r1")
    with closing(sqlite3.connect(path)) as db:  # point CURRENT back at the old password, by hand
        db.execute('UPDATE stage_maps SET stages = replace(stages, \'"current":"r1"\', ?)', (f'"current":"{first}"',))
        db.commit()
    before = on_disk(tmp_path)
    for call in (store.read, lambda: store.read(Stage.PREVIOUS), store.describe, lambda: store.stage(canary(), "r2")):
        with pytest.raises(LocalKeyError, match="altered outside this tool") as error:
            call()
        assert rotate_to not in error_text(error.value)
    assert on_disk(tmp_path) == before
    assert store.read_version(first) != rotate_to  # a version read by its id is authenticated by its own tag


@pytest.fixture
def read_only_mount() -> Iterator[Path]:
    """A folder for a store that a consumer will see read-only (outside pytest's private temporary folder, so that
    an unprivileged reader can reach it)."""
    folder = Path(tempfile.mkdtemp(prefix="rotation-ro-"))
    try:
        yield folder
    finally:
        for p in [folder, *folder.iterdir()]:
            p.chmod(0o700)
        shutil.rmtree(folder)


def _as_a_consumer(read: Callable[[], str]) -> str:
    """``read()`` in a forked process that cannot write the mount (root drops to nobody: root may write anything)."""
    out, into = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(out)
        try:
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            os.write(into, ("ok:" + read()).encode())
        except BaseException as exc:
            os.write(into, f"error:{type(exc).__name__}: {exc}".encode())
        finally:
            os._exit(0)
    os.close(into)
    with os.fdopen(out) as answer:
        result = answer.read()
    os.waitpid(child, 0)
    assert result.startswith("ok:"), result
    return result.removeprefix("ok:")


def test_a_consumer_with_a_read_only_mount_reads_current(read_only_mount: Path) -> None:
    path = read_only_mount / "store.db"
    store = open_store(uri(path))
    store.create(canary())
    value = canary()
    store.stage(value, "r1")
    store.promote("r1")
    for p in (path, path.with_name("store.db.key")):
        if os.geteuid() == 0:
            os.chown(p, 65534, 65534)
        p.chmod(0o400)
    if os.geteuid() == 0:
        os.chown(read_only_mount, 65534, 65534)
    read_only_mount.chmod(0o500)
    before = on_disk(read_only_mount)
    assert _as_a_consumer(lambda: open_store(uri(path)).read()) == value
    assert on_disk(read_only_mount) == before


def test_prune_destroys_retired_versions_on_disk_and_keeps_as_many_as_asked(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = open_store(uri(path))
    versions = [store.create(canary())]
    for number in range(4):
        store.stage(canary(), f"r{number}")
        store.promote(f"r{number}")
        versions.append(f"r{number}")
    with closing(sqlite3.connect(path)) as db:
        ciphertexts = dict(db.execute("SELECT version_id, ciphertext FROM versions").fetchall())
    assert store.prune(keep=1) == versions[:2]  # the oldest first; r1 is kept for audit
    assert store.prune() == ["r1"]
    assert [v.version_id for v in store.describe().versions] == ["r2", "r3"]
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("store.db") and p.is_file())
    for version in versions[:3]:
        assert ciphertexts[version] not in raw, f"the ciphertext of {version} is still in the file"
    with pytest.raises(VersionNotFound):
        store.read_version("r0")


# -- several processes ---------------------------------------------------------------------------------------------


def _create_at_once(uri_text: str, barrier: multiprocessing.synchronize.Barrier) -> None:
    barrier.wait()
    open_store(uri_text).create(f"value-of-{uri_text}")


def _rotate_in_turn(uri_text: str, worker: int, rotations: int, report: str) -> None:
    """Stage (waiting while another worker holds PENDING), note which CURRENT it replaces, promote."""
    store = open_store(uri_text)
    links = []
    for number in range(rotations):
        rotation = f"w{worker}-r{number}"
        while True:
            try:
                store.stage(f"value-{rotation}", rotation)
                break
            except StagingConflict:
                time.sleep(0.001)
        # Only the holder of PENDING may promote, so CURRENT cannot move between these two calls.
        links.append((store.describe().version_at(Stage.CURRENT), rotation))
        store.promote(rotation)
    Path(report).write_text(json.dumps(links))


def test_processes_creating_secrets_in_a_new_file_at_once_share_one_key(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(4)
    uris = [uri(tmp_path / "store.db", secret=f"s{n}") for n in range(4)]
    workers = [context.Process(target=_create_at_once, args=(u, barrier)) for u in uris]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert [w.exitcode for w in workers] == [0] * 4
    assert [open_store(u).read() for u in uris] == [f"value-of-{u}" for u in uris]
    assert sorted(open_store(uris[0]).list()) == ["s0", "s1", "s2", "s3"]


def test_concurrent_rotations_serialize_with_no_lost_update(tmp_path: Path) -> None:
    store_uri = uri(tmp_path / "store.db")
    first = open_store(store_uri).create("initial")
    context = multiprocessing.get_context("spawn")
    workers, rotations = 4, 15
    reports = [tmp_path / f"worker-{n}.json" for n in range(workers)]
    processes = [
        context.Process(target=_rotate_in_turn, args=(store_uri, n, rotations, str(reports[n]))) for n in range(workers)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(120)
    # A worker that met "database is locked" (or any error but StagingConflict) exits non-zero.
    assert [p.exitcode for p in processes] == [0] * workers

    replaced_by = {}
    for report in reports:
        for base, rotation in json.loads(report.read_text()):
            assert base not in replaced_by, f"two rotations both replaced version {base}: a lost update"
            replaced_by[base] = rotation
    chain, version = [], first
    while version in replaced_by:
        version = replaced_by[version]
        chain.append(version)
    assert len(chain) == workers * rotations
    store = open_store(store_uri)
    description = store.describe()
    assert description.version_at(Stage.CURRENT) == chain[-1]
    assert description.version_at(Stage.PREVIOUS) == chain[-2]
    assert description.version_at(Stage.PENDING) is None
    assert len(description.versions) == 1 + workers * rotations
    assert all(store.read_version(rotation) == f"value-{rotation}" for rotation in chain)


_WRITER = """
import sys, uuid
from stores import Stage, open_store
stores = [open_store(f"local://{sys.argv[1]}?secret=s{n}") for n in range(3)]
for store in stores:
    if not store.list() or store.uri.name not in store.list():
        store.create(uuid.uuid4().hex)
    pending = store.describe().version_at(Stage.PENDING)
    if pending:  # left by the writer killed before: roll it back, as recovery would
        store.discard(pending)
print("writing", flush=True)
number = 0
while True:
    for store in stores:
        rotation = uuid.uuid4().hex
        store.stage(uuid.uuid4().hex, rotation)
        if number % 3:
            store.promote(rotation)
        else:
            store.revert(rotation, None)
            store.discard(rotation)
    number += 1
"""


def test_a_writer_killed_mid_write_leaves_a_readable_store(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for _ in range(3):
        writer = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT
        )
        try:
            assert writer.stdout is not None and writer.stdout.readline() == "writing\n"
            time.sleep(random.uniform(0.2, 0.5))
            assert writer.poll() is None, "the writer stopped before it was killed"
        finally:
            writer.send_signal(signal.SIGKILL)
            writer.wait(10)
        with sqlite3.connect(path) as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            assert db.execute("PRAGMA foreign_key_check").fetchall() == []
        for name in ("s0", "s1", "s2"):
            store = open_store(uri(path, secret=name))
            held = [(stage, version.version_id) for version in store.describe().versions for stage in version.stages]
            stages = [stage for stage, _ in held]
            assert stages.count(Stage.CURRENT) == 1
            assert stages.count(Stage.PREVIOUS) <= 1 and stages.count(Stage.PENDING) <= 1
            # A half-done promote or revert would leave one version with two stages.
            assert len({version for _, version in held}) == len(held)
            store.read()
    assert len(open_store(uri(path, secret="s0")).describe().versions) > 3


_STEPS = (
    ("stage", "r1"),
    ("promote", "r1"),
    ("revert", "r1"),
    ("discard", "r1"),
    ("stage", "r2"),
    ("promote", "r2"),
    ("stage", "r3"),
    ("discard", "r3"),
)


def _prepare(path: Path) -> tuple[LocalStore, str]:
    """A secret with CURRENT and PREVIOUS, ready for the steps above."""
    store = LocalStore(SecretURI.parse(uri(path)))
    first = store.create("value-v0")
    store.stage("value-r0", "r0")
    store.promote("r0")
    return store, first


def _run_steps(store: LocalStore, first: str, after_each: Callable[[], None] = lambda: None) -> None:
    for operation, rotation in _STEPS:
        if operation == "stage":
            store.stage(f"value-{rotation}", rotation)
        elif operation == "revert":
            store.revert(rotation, first)
        else:
            getattr(store, operation)(rotation)
        after_each()


class _DyingConnection(sqlite3.Connection):
    """Kills its own process with SIGKILL when it is about to run statement number ``left``."""

    left = -1

    def execute(self, *args: Any) -> sqlite3.Cursor:
        _DyingConnection.left -= 1
        if _DyingConnection.left == 0:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().execute(*args)


def _crash_at_every_statement(folder: str) -> None:
    """For k = 1, 2, ...: a forked child runs the steps on its own store file and SIGKILLs itself at statement k."""
    real_connect = sqlite3.connect
    sqlite3.connect = lambda *args, **kwargs: real_connect(*args, factory=_DyingConnection, **kwargs)  # type: ignore[assignment]
    for point in range(1, 1000):
        store, first = _prepare(Path(folder) / str(point) / "store.db")
        child = os.fork()
        if child == 0:
            _DyingConnection.left = point
            _run_steps(store, first)
            os._exit(0)
        _, status = os.waitpid(child, 0)
        if os.WIFEXITED(status):  # the steps ran out of statements before the kill point: every point was tried
            assert os.WEXITSTATUS(status) == 0
            return
        assert os.WTERMSIG(status) == signal.SIGKILL


def _state(store: LocalStore) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Versions and their stages, with the first version's random id named v0."""
    versions = store.describe().versions
    name = {versions[0].version_id: "v0"}
    return tuple((name.get(v.version_id, v.version_id), tuple(v.stages)) for v in versions)


def test_a_kill_at_any_statement_leaves_the_state_between_two_calls(tmp_path: Path) -> None:
    reference, first = _prepare(tmp_path / "reference" / "store.db")
    legal = [_state(reference)]
    _run_steps(reference, first, lambda: legal.append(_state(reference)))

    context = multiprocessing.get_context("spawn")
    crasher = context.Process(target=_crash_at_every_statement, args=(str(tmp_path / "k"),))
    crasher.start()
    crasher.join(120)
    assert crasher.exitcode == 0

    seen = set()
    points = sorted((tmp_path / "k").iterdir(), key=lambda p: int(p.name))
    assert len(points) > 3 * len(_STEPS)  # several statements per call, so kills landed inside transactions
    for point in points:
        store = LocalStore(SecretURI.parse(uri(point / "store.db")))
        state = _state(store)
        assert state in legal, f"killed at statement {point.name}: {state} is no state between two calls"
        assert store.read() in ("value-v0", "value-r0", "value-r1", "value-r2")
        seen.add(state)
    assert seen == set(legal)


def test_a_store_file_of_the_first_release_is_upgraded_in_place(tmp_path: Path) -> None:
    """Schema 1 kept stages in a table of their own, with no MAC and no marker: the first open upgrades it."""
    path, key = tmp_path / "store.db", AESGCM.generate_key(bit_length=256)
    key_file = tmp_path / "store.db.key"
    key_file.write_bytes(base64.b64encode(key) + b"\n")
    key_file.chmod(0o600)
    db = sqlite3.connect(path)
    db.executescript(
        """CREATE TABLE versions (seq INTEGER PRIMARY KEY AUTOINCREMENT, secret TEXT NOT NULL,
               version_id TEXT NOT NULL, ciphertext BLOB NOT NULL, nonce BLOB NOT NULL, created_at TEXT NOT NULL,
               UNIQUE (secret, version_id));
           CREATE TABLE stages (secret TEXT NOT NULL, stage TEXT NOT NULL, version_id TEXT NOT NULL,
               PRIMARY KEY (secret, stage));
           PRAGMA user_version = 1;"""
    )
    for version, value, stage in (
        ("v0", "value-one-0123456789", "PREVIOUS"),
        ("v1", "value-two-0123456789", "CURRENT"),
    ):
        nonce = b"\0" * 11 + version[-1].encode()
        sealed = AESGCM(key).encrypt(nonce, value.encode(), json.dumps(["jwt", version]).encode())
        db.execute("INSERT INTO versions (secret, version_id, ciphertext, nonce, created_at) VALUES (?, ?, ?, ?, ?)",
                   ("jwt", version, sealed, nonce, "2026-01-01T00:00:00+00:00"))  # fmt: skip
        db.execute("INSERT INTO stages VALUES (?, ?, ?)", ("jwt", stage, version))
    db.commit()
    db.close()

    store = open_store(f"local://{path}?secret=jwt")
    assert store.read(Stage.CURRENT) == "value-two-0123456789"
    assert store.read(Stage.PREVIOUS) == "value-one-0123456789"
    rotation = "0f6b1a80-0000-4000-8000-000000000001"
    store.stage("value-three-0123456789", rotation)
    store.promote(rotation)
    assert store.read(Stage.CURRENT) == "value-three-0123456789"
    marked = sqlite3.connect(path)
    assert marked.execute("PRAGMA user_version").fetchone()[0] == 2
    assert marked.execute("SELECT name FROM sqlite_master WHERE name = 'stages'").fetchone() is None
    marked.close()
