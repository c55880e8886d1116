"""The embedded store: many secrets in one SQLite file, each value encrypted with AES-GCM under a key file.

``local:///var/lib/rotate/store.db?secret=jwt`` names the secret ``jwt`` in that file; the key lives beside it
(``store.db.key``) unless ``key=/abs/path`` says otherwise. What it refuses, so that a mistake never costs data:

- a file that is not a store: store files carry SQLite's ``application_id`` 0x726F7461 ("rota"), read from the
  file's header before SQLite opens it, so another database or a rotation journal is refused and left byte for byte
  as it was (no table added, no switch to WAL, no key file made);
- a new key for a store that holds versions: the key file is created (mode 0600) only with the file's first
  version; the key of a store with versions missing is an error that says to restore it; a key file others may
  read is refused;
- a stage map it did not write: each secret's stage map carries an HMAC under a key derived from the store's key,
  so a pointer edited in the file is detected, never served (each value's AES-GCM tag binds it to its secret and
  version id the same way). An older map copied back over a newer one is not detected: keep backups private too.

A consumer with a read-only mount of the store (file and folder not writable) reads CURRENT: reads open the file
read-only, and immutable when the folder cannot hold SQLite's shared-memory file (with no ``-wal`` file beside it,
no writer has it open). Every operation is one transaction (``BEGIN IMMEDIATE`` for changes) in WAL mode with
``synchronous=FULL`` and ``secure_delete`` (a destroyed version's ciphertext is overwritten, not left in a free
page), so writers in several processes serialize and a crash leaves the last committed state.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import sqlite3
import stat
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar, Literal
from urllib.parse import quote

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from tenacity import (
    retry,
    retry_if_exception,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_fixed,
    wait_random,
)

from stores.base import SecretStore, Snapshot, Staged, StageMap
from stores.errors import (
    InvalidStoreURI,
    SecretExists,
    SecretNotFound,
    StagingConflict,
    StoreError,
    StorePermissionDenied,
    StoreUnavailable,
    VersionNotFound,
)
from stores.uri import SecretURI

_APPLICATION_ID = 0x726F7461  # "rota", in the SQLite header of every store file
_SCHEMA = (
    """CREATE TABLE versions (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        secret TEXT NOT NULL, version_id TEXT NOT NULL,
        ciphertext BLOB NOT NULL, nonce BLOB NOT NULL, created_at TEXT NOT NULL,
        UNIQUE (secret, version_id))""",
    # One row per secret: a map holds at most one version per stage by construction; the MAC covers the revision.
    "CREATE TABLE stage_maps (secret TEXT PRIMARY KEY, revision INTEGER NOT NULL, stages TEXT NOT NULL, mac BLOB)",
    f"PRAGMA application_id = {_APPLICATION_ID}",
    "PRAGMA user_version = 2",
)
_KEY_BYTES = 32
_BUSY_TIMEOUT_S = 30.0
_ERRORS: dict[str, tuple[type[StoreError], str]] = {
    "locked": (StoreUnavailable, "the file stayed locked by another writer past the busy timeout: retry when the "
               "other rotation's step has finished"),
    "readonly": (StorePermissionDenied, "the file is read-only for this user: run the rotation as a user that may "
                 "write the file and its folder"),
    "unusable": (StoreUnavailable, "check that it is a readable and writable store file, and retry"),
}  # fmt: skip


def _is_schema_1(db: sqlite3.Connection) -> bool:
    """A store file of the first release: its two tables, user_version 1, no marker."""
    tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    return db.execute("PRAGMA user_version").fetchone()[0] == 1 and tables == {"versions", "stages", "sqlite_sequence"}


class LocalKeyError(StorePermissionDenied):
    """The key file is missing, unsafe, malformed, or does not authenticate this store's contents."""


class _NotMarked(Exception):
    """The file's header does not carry the store's marker (yet: see ``_probe_header``)."""


class NotAStoreFile(InvalidStoreURI):
    """The path names a file that is not a store of this tool (another database, a rotation journal...)."""


class LocalStore(SecretStore):
    """One secret in a local SQLite store file."""

    OPTIONS: ClassVar[dict[str, str]] = {"key": "key=/abs/path/to/keyfile"}
    CACHE_VALUES: ClassVar[bool] = False
    ERRORS = _ERRORS

    def __init__(self, uri: SecretURI) -> None:
        super().__init__(uri)
        key = self.uri.options.get("key", uri.location + ".key")
        if not key.startswith("/"):
            raise InvalidStoreURI(
                f"key file {key!r} in {uri.display} must be an absolute path: key=/abs/path/to/keyfile"
            )
        self.path = Path(uri.location)
        self.key_path = Path(key)
        self.secret = uri.name
        self._db: sqlite3.Connection | None = None  # the open transaction's connection; None: no store file yet

    def canonical_options(self, uri: SecretURI) -> dict[str, str]:
        options = dict(uri.options)
        key = options.get("key")
        if key is not None and key.startswith("/") and os.path.realpath(key) == uri.location + ".key":
            del options["key"]
        return options

    # --- primitives ------------------------------------------------------------------------------------------------

    def _snapshot(self, repair: bool) -> Snapshot:
        row = self._query("SELECT revision, stages, mac FROM stage_maps WHERE secret = ?")
        if not row:
            raise SecretNotFound(
                f"secret {self.secret!r} does not exist in {self.uri.display}: create it first, for example "
                f"open_store({self.uri.display!r}).create(value)"
            )
        revision, stages, mac = row[0]
        if not hmac.compare_digest(mac or b"", self._mac(revision, stages)):
            raise LocalKeyError(
                f"the stage map of secret {self.secret!r} in {self.path} does not verify with key file "
                f"{self.key_path}: it is not the key the store was written with, or the file was altered outside "
                "this tool; point key= at the store's own key file, or restore the store from a backup"
            )
        versions = frozenset(v for (v,) in self._query("SELECT version_id FROM versions WHERE secret = ?"))
        return Snapshot(stages=StageMap.model_validate_json(stages), versions=versions, token=revision)

    def _write_stages(self, snapshot: Snapshot, stages: StageMap, staged: Staged | None = None) -> str | None:
        assert self._db is not None
        if staged is not None:
            self._insert(staged.rotation_id, staged.value)
            stages = stages.but(pending=staged.rotation_id)
        text, revision = stages.model_dump_json(), snapshot.token + 1
        written = self._db.execute(
            "UPDATE stage_maps SET revision = ?, stages = ?, mac = ? WHERE secret = ? AND revision = ?",
            (revision, text, self._mac(revision, text), self.secret, snapshot.token),
        ).rowcount
        if not written:  # inside one transaction this cannot happen; it keeps the primitive's promise regardless
            raise StagingConflict(f"the stage map of {self.uri.display} changed meanwhile; retry the step")
        return staged.rotation_id if staged else None

    def _read_value(self, version_id: str, snapshot: Snapshot | None) -> str:
        rows = self._query("SELECT ciphertext, nonce FROM versions WHERE secret = ? AND version_id = ?", version_id)
        if not rows:
            raise VersionNotFound(f"{self.uri.display} has no version {version_id!r}")
        ciphertext, nonce = rows[0]
        try:
            return AESGCM(self._key()).decrypt(nonce, ciphertext, self._aad(version_id)).decode()
        except InvalidTag:
            raise LocalKeyError(
                f"version {version_id!r} of secret {self.secret!r} in {self.path} does not decrypt with key file "
                f"{self.key_path}: this is not the key the store was written with (or the file was altered); "
                "point key= at the store's original key file"
            ) from None

    def _delete(self, snapshot: Snapshot, version_id: str) -> None:
        assert self._db is not None
        self._db.execute("DELETE FROM versions WHERE secret = ? AND version_id = ?", (self.secret, version_id))

    def _delete_secret(self, snapshot: Snapshot) -> None:
        assert self._db is not None
        for table in ("versions", "stage_maps"):  # one transaction: a crash leaves the secret whole or gone
            self._db.execute(f"DELETE FROM {table} WHERE secret = ?", (self.secret,))

    def _describe(self, snapshot: Snapshot) -> list[tuple[str, datetime | None]]:
        rows = self._query("SELECT version_id, created_at FROM versions WHERE secret = ? ORDER BY seq")
        return [(version, datetime.fromisoformat(created)) for version, created in rows]

    def _create(self, value: str) -> str:
        assert self._db is not None
        if self._query("SELECT 1 FROM stage_maps WHERE secret = ?"):
            raise SecretExists(
                f"secret {self.secret!r} already exists in {self.uri.display}: rotate it instead, or pick another "
                "secret name"
            )
        if not self.key_path.exists() and not self._db.execute("SELECT 1 FROM versions LIMIT 1").fetchone():
            _create_key_file(self.key_path)  # a file's first version: no value was ever encrypted with another key
        version = uuid.uuid4().hex
        self._insert(version, value)
        text = StageMap(current=version).model_dump_json()
        self._db.execute("INSERT INTO stage_maps VALUES (?, 1, ?, ?)", (self.secret, text, self._mac(1, text)))
        return version

    def _list(self) -> list[str]:
        return [name for (name,) in self._query("SELECT secret FROM stage_maps ORDER BY secret", secret=False)]

    def _condition(self, exc: Exception, action: str) -> tuple[str, str] | None:
        if not isinstance(exc, sqlite3.Error):
            return None
        return next((c for c in ("locked", "readonly") if c in str(exc)), "unusable"), type(exc).__name__

    # --- the file --------------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _session(self, *, write: bool) -> Iterator[None]:
        failure: StoreError | None = None
        try:
            db = self._open(write)
            if db is None:  # a store never written: every read finds nothing
                yield
                return
            with contextlib.closing(db):
                db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                self._db = db
                try:
                    yield
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                finally:
                    self._db = None
        except sqlite3.Error as exc:
            failure = self._translate(exc, "change the secret" if write else "read the secret")
        if failure is not None:
            raise failure  # outside the except block: the SQLite error is not chained to it

    def _open(self, write: bool) -> sqlite3.Connection | None:
        kind = self._file_kind()
        if kind == "schema-1" and not (os.access(self.path, os.W_OK) and os.access(self.path.parent, os.W_OK)):
            raise StorePermissionDenied(
                f"{self.path} is a store written by an earlier version of this tool (schema 1): open it once as a "
                "user that may write the file and its folder (any rotate command does), which upgrades it in place"
            )
        if not write and kind not in ("store", "schema-1"):
            return None  # never written: nothing to read, and nothing is made
        if not write and not (os.access(self.path, os.W_OK) and os.access(self.path.parent, os.W_OK)):
            return self._open_readonly()
        if kind == "absent":
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            # Made here, not by SQLite, so the file (and the -wal/-shm files SQLite copies its mode to) is private.
            with contextlib.suppress(FileExistsError):
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        # Read-write even to read, when it may: the last connection to close then folds and removes the -wal and
        # -shm files, where a read-only one would leave them behind.
        db = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
        try:
            if kind == "schema-1":
                self._upgrade_schema_1(db)
            elif kind != "store":
                self._init_schema(db)
            db.execute("PRAGMA synchronous = FULL")
            db.execute("PRAGMA secure_delete = ON")
        except BaseException:
            db.close()
            raise
        return db

    def _file_kind(self) -> Literal["absent", "empty", "store", "schema-1"]:
        """What the path holds, from its header alone, read without locks and without writing anything.

        Read through SQLite rather than by opening the file: closing any other descriptor of a database file drops
        the POSIX locks this process's connections hold on it, and with them SQLite's safety.
        """
        try:
            if self.path.stat().st_size == 0:
                return "empty"  # a store whose creation stopped before SQLite wrote to it
        except FileNotFoundError:
            return "absent"
        try:
            return self._probe_header()
        except _NotMarked:
            raise self._not_a_store() from None

    # A probe without locks may read the file while another process checkpoints its WAL into it, and see a page
    # half-written: a store is only called foreign when a few probes, a moment apart, agree.
    @retry(retry=retry_if_exception_type(_NotMarked), wait=wait_fixed(0.05), stop=stop_after_attempt(4), reraise=True)
    def _probe_header(self) -> Literal["store", "schema-1"]:
        probe = sqlite3.connect(f"file:{quote(str(self.path))}?mode=ro&immutable=1", uri=True)
        try:
            marker = probe.execute("PRAGMA application_id").fetchone()[0]
            if marker != _APPLICATION_ID and _is_schema_1(probe):
                return "schema-1"
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError):
                raise  # not readable by this user: said as such by _translate
            marker = None  # not an SQLite file at all
        finally:
            probe.close()
        if marker != _APPLICATION_ID:
            raise _NotMarked
        return "store"

    def _not_a_store(self) -> NotAStoreFile:
        return NotAStoreFile(
            f"{self.path} is not a secret store of this tool (another SQLite database, a rotation journal or another "
            f"file): nothing was read or written; name a store file in {self.uri.display}, or a new path to make one"
        )

    def _open_readonly(self) -> sqlite3.Connection:
        """For a consumer that may not write the file or its folder (a read-only mount)."""
        location = f"file:{quote(str(self.path))}?mode=ro"
        db = sqlite3.connect(location, uri=True, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
        try:
            db.execute("PRAGMA application_id").fetchone()  # opens the file, and the WAL's shared memory
        except sqlite3.OperationalError:
            db.close()
            if os.access(self.path.parent, os.W_OK):
                raise
            db = sqlite3.connect(f"{location}&immutable=1", uri=True, isolation_level=None)
        return db

    @retry(
        # Switching a new file to WAL needs it alone: SQLite answers "locked" at once, without its busy wait,
        # when several processes open a new store together.
        retry=retry_if_exception(lambda exc: isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)),
        wait=wait_random(0.01, 0.2),
        stop=stop_after_delay(_BUSY_TIMEOUT_S),
        reraise=True,
    )
    def _init_schema(self, db: sqlite3.Connection) -> None:
        db.execute("BEGIN IMMEDIATE")
        try:
            if db.execute("PRAGMA application_id").fetchone()[0] != _APPLICATION_ID:  # else made by a racing process
                if db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                    raise self._not_a_store()  # the empty file became another database meanwhile
                for statement in _SCHEMA:
                    db.execute(statement)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        # After the marker is in the main file: its header must say "store" before the WAL holds anything.
        db.execute("PRAGMA journal_mode = WAL")

    def _upgrade_schema_1(self, db: sqlite3.Connection) -> None:
        """Store files of the first release kept stages in a table without a MAC: move each secret's stages into a
        stage map the key authenticates, then mark the file. One transaction: a crash leaves it as it was."""
        db.execute("BEGIN IMMEDIATE")
        try:
            if db.execute("PRAGMA application_id").fetchone()[0] != _APPLICATION_ID:  # else a racing process did it
                db.execute(_SCHEMA[1])  # the stage_maps table
                maps: dict[str, dict[str, str]] = {}
                for secret, stage, version in db.execute("SELECT secret, stage, version_id FROM stages"):
                    maps.setdefault(secret, {})[stage.lower()] = version
                for secret in (name for (name,) in db.execute("SELECT DISTINCT secret FROM versions")):
                    text = StageMap(**maps.get(secret, {})).model_dump_json()
                    db.execute("INSERT INTO stage_maps VALUES (?, 1, ?, ?)", (secret, text, self._mac(1, text, secret)))
                db.execute("DROP TABLE stages")
                db.execute(f"PRAGMA application_id = {_APPLICATION_ID}")
                db.execute("PRAGMA user_version = 2")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _query(self, sql: str, *arguments: str, secret: bool = True) -> list[tuple]:
        if self._db is None:
            return []
        return self._db.execute(sql, ((self.secret,) if secret else ()) + arguments).fetchall()

    def _insert(self, version_id: str, value: str) -> None:
        assert self._db is not None
        nonce = os.urandom(12)
        ciphertext = AESGCM(self._key()).encrypt(nonce, value.encode(), self._aad(version_id))
        self._db.execute(
            "INSERT INTO versions (secret, version_id, ciphertext, nonce, created_at) VALUES (?, ?, ?, ?, ?)",
            (self.secret, version_id, ciphertext, nonce, datetime.now(UTC).isoformat()),
        )

    # --- the key ---------------------------------------------------------------------------------------------------

    def _aad(self, version_id: str) -> bytes:
        # Binding the secret name and version id means a ciphertext copied to another row no longer decrypts.
        return json.dumps([self.secret, version_id]).encode()

    def _mac(self, revision: int, stages: str, secret: str | None = None) -> bytes:
        # A key of its own, derived from the store's key: the AES-GCM key is never used for anything else.
        mac_key = HKDF(hashes.SHA256(), 32, salt=None, info=b"secret-rotation local store: stage map").derive(
            self._key()
        )
        message = json.dumps([secret or self.secret, revision, stages]).encode()
        return hmac.new(mac_key, message, hashlib.sha256).digest()

    def _key(self) -> bytes:
        try:
            info = self.key_path.stat()
            encoded = self.key_path.read_bytes()
        except FileNotFoundError:
            raise LocalKeyError(
                f"key file {self.key_path} of {self.uri.display} is missing: restore it from your backup "
                "(without it the store cannot be decrypted, and no new key is made for a store that holds versions), "
                "or point key= at it"
            ) from None
        except PermissionError:
            raise LocalKeyError(
                f"key file {self.key_path} of {self.uri.display} is not readable by this user: "
                "run the rotation as the user that owns it"
            ) from None
        if not stat.S_ISREG(info.st_mode) or info.st_mode & 0o077:
            raise LocalKeyError(
                f"key file {self.key_path} of {self.uri.display} has mode {stat.filemode(info.st_mode)}: "
                f"other users may read it; run chmod 600 {self.key_path} (and check nobody copied it)"
            )
        try:
            key = base64.b64decode(encoded.strip(), validate=True)
        except ValueError:
            key = b""
        if len(key) != _KEY_BYTES:
            raise LocalKeyError(
                f"key file {self.key_path} of {self.uri.display} does not hold a 256-bit base64 key: "
                "restore the original key file"
            )
        return key


def _create_key_file(path: Path) -> None:
    """Write a new random key so that the file never exists with wider permissions or partial content."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(base64.b64encode(AESGCM.generate_key(bit_length=256)) + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        # link() fails if the name exists: when two processes race, the first key wins and the other is dropped.
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
