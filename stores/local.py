"""The embedded store: many secrets in one SQLite file, each value encrypted with AES-GCM under a key file.

``local:///var/lib/rotate/store.db?secret=jwt`` names the secret ``jwt`` in that file; the key lives beside it
(``store.db.key``) unless ``key=/abs/path`` says otherwise. The key file is created on first write with mode 0600 and
refused when anyone but its owner may read it. Every mutation is one ``BEGIN IMMEDIATE`` transaction in WAL mode with
``synchronous=FULL``, so writers in several processes serialize and a crash leaves the last committed state.
Stages follow AWS Secrets Manager's labels: at most one version per stage, enforced by the schema itself.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import sqlite3
import stat
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from tenacity import retry, retry_if_exception, stop_after_delay, wait_random

from stores.base import SecretDescription, SecretStore, Stage, VersionInfo
from stores.errors import (
    InvalidStoreURI,
    SecretExists,
    SecretNotFound,
    StagingConflict,
    StorePermissionDenied,
    StoreUnavailable,
    VersionNotFound,
)
from stores.uri import SecretURI

_SCHEMA_VERSION = 1
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS versions (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        secret TEXT NOT NULL, version_id TEXT NOT NULL,
        ciphertext BLOB NOT NULL, nonce BLOB NOT NULL, created_at TEXT NOT NULL,
        UNIQUE (secret, version_id))""",
    # The primary key is what makes "one version per stage" impossible to break, even by a buggy writer.
    """CREATE TABLE IF NOT EXISTS stages (
        secret TEXT NOT NULL,
        stage TEXT NOT NULL CHECK (stage IN ('CURRENT', 'PENDING', 'PREVIOUS')),
        version_id TEXT NOT NULL,
        PRIMARY KEY (secret, stage),
        FOREIGN KEY (secret, version_id) REFERENCES versions (secret, version_id) ON DELETE CASCADE)""",
    f"PRAGMA user_version = {_SCHEMA_VERSION}",
)
_KEY_BYTES = 32
_BUSY_TIMEOUT_S = 30.0


class LocalKeyError(StorePermissionDenied):
    """The key file is missing, unsafe, malformed or does not decrypt this store."""


class LocalStore(SecretStore):
    """One secret in a local SQLite store file."""

    OPTIONS: ClassVar[dict[str, str]] = {"key": "key=/abs/path/to/keyfile"}

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

    def canonical_options(self, uri: SecretURI) -> dict[str, str]:
        options = dict(uri.options)
        key = options.get("key")
        if key is not None and key.startswith("/") and os.path.realpath(key) == uri.location + ".key":
            del options["key"]
        return options

    # -- reads ------------------------------------------------------------------------------------------------------

    def read(self, stage: Stage = Stage.CURRENT) -> str:
        stage = Stage(stage)
        with self._transaction(write=False) as db:
            self._require_secret(db)
            row = db.execute(
                "SELECT v.version_id, v.ciphertext, v.nonce FROM stages s JOIN versions v "
                "ON v.secret = s.secret AND v.version_id = s.version_id WHERE s.secret = ? AND s.stage = ?",
                (self.secret, stage.value),
            ).fetchone()
        if row is None:
            raise VersionNotFound(f"secret {self.secret!r} in {self.uri.display} has no {stage.value} version")
        return self._decrypt(*row)

    def read_version(self, version_id: str) -> str:
        with self._transaction(write=False) as db:
            self._require_secret(db)
            row = db.execute(
                "SELECT version_id, ciphertext, nonce FROM versions WHERE secret = ? AND version_id = ?",
                (self.secret, version_id),
            ).fetchone()
        if row is None:
            raise VersionNotFound(f"secret {self.secret!r} in {self.uri.display} has no version {version_id!r}")
        return self._decrypt(*row)

    def describe(self) -> SecretDescription:
        with self._transaction(write=False) as db:
            self._require_secret(db)
            rows = db.execute(
                "SELECT version_id, created_at FROM versions WHERE secret = ? ORDER BY seq", (self.secret,)
            ).fetchall()
            stages = self._stages(db)
        by_version: dict[str, list[Stage]] = {}
        for stage, version_id in stages.items():
            by_version.setdefault(version_id, []).append(stage)
        versions = tuple(
            VersionInfo(
                version_id=version_id,
                stages=tuple(sorted(by_version.get(version_id, ()), key=list(Stage).index)),
                created_at=datetime.fromisoformat(created_at),
            )
            for version_id, created_at in rows
        )
        return SecretDescription(uri=self.uri.display, versions=versions)

    def list(self) -> list[str]:
        with self._transaction(write=False) as db:
            return [name for (name,) in db.execute("SELECT DISTINCT secret FROM versions ORDER BY secret")]

    # -- writes -----------------------------------------------------------------------------------------------------

    def create(self, value: str) -> str:
        _check_value(value)
        version_id = uuid.uuid4().hex
        with self._transaction(write=True) as db:
            if self._exists(db):
                raise SecretExists(
                    f"secret {self.secret!r} already exists in {self.uri.display}: "
                    "rotate it instead, or pick another secret name"
                )
            self._insert_version(db, version_id, value)
            self._set_stage(db, Stage.CURRENT, version_id)
        return version_id

    def stage(self, value: str, rotation_id: str) -> str:
        _check_value(value)
        _check_rotation_id(rotation_id)
        with self._transaction(write=True) as db:
            self._require_secret(db)
            if self._version_exists(db, rotation_id):
                return rotation_id
            holder = self._stages(db).get(Stage.PENDING)
            if holder is not None:
                raise StagingConflict(
                    f"rotation {holder!r} holds the PENDING stage of secret {self.secret!r} in {self.uri.display}: "
                    f"finish it (promote) or roll it back (revert, discard) before staging rotation {rotation_id!r}"
                )
            self._insert_version(db, rotation_id, value)
            self._set_stage(db, Stage.PENDING, rotation_id)
        return rotation_id

    def promote(self, rotation_id: str) -> None:
        with self._transaction(write=True) as db:
            self._require_secret(db)
            stages = self._stages(db)
            if stages.get(Stage.CURRENT) == rotation_id:
                return
            if stages.get(Stage.PENDING) != rotation_id:
                raise VersionNotFound(
                    f"rotation {rotation_id!r} has no PENDING version of secret {self.secret!r} in "
                    f"{self.uri.display} (PENDING: {stages.get(Stage.PENDING) or 'none'}): stage it before promoting"
                )
            self._drop_stage(db, Stage.PENDING)
            old_current = stages.get(Stage.CURRENT)
            if old_current is not None:
                self._set_stage(db, Stage.PREVIOUS, old_current)
            self._set_stage(db, Stage.CURRENT, rotation_id)

    def revert(self, rotation_id: str, previous_version: str | None) -> None:
        with self._transaction(write=True) as db:
            self._require_secret(db)
            stages = self._stages(db)
            if stages.get(Stage.CURRENT) == rotation_id:
                back = stages.get(Stage.PREVIOUS)
                if back is None:
                    raise VersionNotFound(
                        f"cannot revert rotation {rotation_id!r} of secret {self.secret!r} in {self.uri.display}: "
                        "no PREVIOUS version to make CURRENT again; stage and promote a known good value instead"
                    )
                if previous_version is not None and (
                    previous_version in (back, rotation_id) or not self._version_exists(db, previous_version)
                ):
                    raise VersionNotFound(
                        f"cannot revert rotation {rotation_id!r} of secret {self.secret!r} in {self.uri.display}: "
                        f"version {previous_version!r} recorded as PREVIOUS before the rotation is not an older "
                        "version of this secret; check the rotation journal"
                    )
                self._drop_stage(db, Stage.PENDING)
                self._set_stage(db, Stage.CURRENT, back)
                if previous_version is None:
                    self._drop_stage(db, Stage.PREVIOUS)
                else:
                    self._set_stage(db, Stage.PREVIOUS, previous_version)
            elif stages.get(Stage.PENDING) == rotation_id:
                self._drop_stage(db, Stage.PENDING)

    def discard(self, rotation_id: str) -> None:
        with self._transaction(write=True) as db:
            self._require_secret(db)
            stages = self._stages(db)
            # A version that is or was in service stays: discard only removes what was staged and never promoted
            # (or was reverted).
            if rotation_id in (stages.get(Stage.CURRENT), stages.get(Stage.PREVIOUS)):
                return
            db.execute("DELETE FROM versions WHERE secret = ? AND version_id = ?", (self.secret, rotation_id))

    # -- database ---------------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self, *, write: bool) -> Iterator[sqlite3.Connection]:
        """One transaction: ``BEGIN IMMEDIATE`` for writes so concurrent writers queue on the busy timeout."""
        try:
            with contextlib.closing(self._connect(create=write)) as db:
                db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    yield db
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc):
                raise _unusable(self.path, exc) from None
            raise StoreUnavailable(
                f"local store file {self.path} stayed locked by another writer for {_BUSY_TIMEOUT_S:.0f} s: "
                "retry when the other rotation's step has finished"
            ) from None
        except sqlite3.Error as exc:
            raise _unusable(self.path, exc) from None

    def _connect(self, *, create: bool) -> sqlite3.Connection:
        if not create and not self.path.exists():
            # Reading a store that was never written: an empty in-memory database answers, and no file is created.
            db = sqlite3.connect(":memory:", isolation_level=None)
            self._init_schema(db)
            return db
        if create and not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            # Made here, not by SQLite, so the file (and the -wal/-shm files SQLite copies its mode to) is private.
            with contextlib.suppress(FileExistsError):
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        db = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
        try:
            db.execute("PRAGMA foreign_keys = ON")
            db.execute("PRAGMA synchronous = FULL")
            if db.execute("PRAGMA user_version").fetchone()[0] < _SCHEMA_VERSION:
                self._init_schema(db)
        except BaseException:
            db.close()
            raise
        return db

    @staticmethod
    @retry(
        # Switching a new file to WAL needs it alone: SQLite answers "locked" at once, without its busy wait,
        # when several processes open a new store together.
        retry=retry_if_exception(lambda exc: isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)),
        wait=wait_random(0.01, 0.2),
        stop=stop_after_delay(_BUSY_TIMEOUT_S),
        reraise=True,
    )
    def _init_schema(db: sqlite3.Connection) -> None:
        # WAL is a property of the file, set once: readers then never block the writer nor the other way round.
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA:
                db.execute(statement)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _exists(self, db: sqlite3.Connection) -> bool:
        return db.execute("SELECT 1 FROM versions WHERE secret = ? LIMIT 1", (self.secret,)).fetchone() is not None

    def _require_secret(self, db: sqlite3.Connection) -> None:
        if not self._exists(db):
            raise SecretNotFound(
                f"secret {self.secret!r} does not exist in {self.uri.display}: create it first, for example "
                f"open_store({self.uri.display!r}).create(value)"
            )

    def _version_exists(self, db: sqlite3.Connection, version_id: str) -> bool:
        return (
            db.execute(
                "SELECT 1 FROM versions WHERE secret = ? AND version_id = ?", (self.secret, version_id)
            ).fetchone()
            is not None
        )

    def _stages(self, db: sqlite3.Connection) -> dict[Stage, str]:
        rows = db.execute("SELECT stage, version_id FROM stages WHERE secret = ?", (self.secret,))
        return {Stage(stage): version_id for stage, version_id in rows}

    def _set_stage(self, db: sqlite3.Connection, stage: Stage, version_id: str) -> None:
        db.execute(
            "INSERT INTO stages (secret, stage, version_id) VALUES (?, ?, ?) "
            "ON CONFLICT (secret, stage) DO UPDATE SET version_id = excluded.version_id",
            (self.secret, stage.value, version_id),
        )

    def _drop_stage(self, db: sqlite3.Connection, stage: Stage) -> None:
        db.execute("DELETE FROM stages WHERE secret = ? AND stage = ?", (self.secret, stage.value))

    def _insert_version(self, db: sqlite3.Connection, version_id: str, value: str) -> None:
        nonce = os.urandom(12)
        ciphertext = AESGCM(self._key(create=True)).encrypt(nonce, value.encode(), self._aad(version_id))
        db.execute(
            "INSERT INTO versions (secret, version_id, ciphertext, nonce, created_at) VALUES (?, ?, ?, ?, ?)",
            (self.secret, version_id, ciphertext, nonce, datetime.now(UTC).isoformat()),
        )

    # -- encryption -------------------------------------------------------------------------------------------------

    def _aad(self, version_id: str) -> bytes:
        # Binding the secret name and version id means a ciphertext copied to another row no longer decrypts.
        return json.dumps([self.secret, version_id]).encode()

    def _decrypt(self, version_id: str, ciphertext: bytes, nonce: bytes) -> str:
        try:
            return AESGCM(self._key(create=False)).decrypt(nonce, ciphertext, self._aad(version_id)).decode()
        except InvalidTag:
            raise LocalKeyError(
                f"version {version_id!r} of secret {self.secret!r} in {self.path} does not decrypt with key file "
                f"{self.key_path}: this is not the key the store was written with (or the file was altered); "
                "point key= at the store's original key file"
            ) from None

    def _key(self, *, create: bool) -> bytes:
        if create and not self.key_path.exists():
            _create_key_file(self.key_path)
        try:
            info = self.key_path.stat()
            encoded = self.key_path.read_bytes()
        except FileNotFoundError:
            raise LocalKeyError(
                f"key file {self.key_path} of local store {self.path} is missing: restore it from your backup "
                "(without it the store cannot be decrypted), or point key= at it"
            ) from None
        except PermissionError:
            raise LocalKeyError(
                f"key file {self.key_path} of local store {self.path} is not readable by this user: "
                "run the rotation as the user that owns it"
            ) from None
        if not stat.S_ISREG(info.st_mode) or info.st_mode & 0o077:
            raise LocalKeyError(
                f"key file {self.key_path} of local store {self.path} has mode {stat.filemode(info.st_mode)}: "
                f"other users may read it; run chmod 600 {self.key_path} (and check nobody copied it)"
            )
        try:
            key = base64.b64decode(encoded.strip(), validate=True)
        except ValueError:
            key = b""
        if len(key) != _KEY_BYTES:
            raise LocalKeyError(
                f"key file {self.key_path} of local store {self.path} does not hold a 256-bit base64 key: "
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


def _unusable(path: Path, error: sqlite3.Error) -> StoreUnavailable:
    return StoreUnavailable(
        f"local store file {path} could not be used ({error}): check that it is a readable and writable SQLite "
        "file of this store and retry"
    )


def _check_value(value: str) -> None:
    if not isinstance(value, str):
        raise TypeError(f"a secret value must be a str (JSON for structured secrets), not {type(value).__name__}")


def _check_rotation_id(rotation_id: str) -> None:
    if not isinstance(rotation_id, str) or not rotation_id.strip():
        raise ValueError("a rotation id must be a non-empty string, for example a UUID")
