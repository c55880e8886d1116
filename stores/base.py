"""The store interface: one versioned secret with the stages CURRENT, PENDING and PREVIOUS.

The model is AWS Secrets Manager's: a rotation stages a new version under its rotation id (PENDING), promotes it
(CURRENT; the old current becomes PREVIOUS) and, on failure, reverts or discards it. The transitions and their
"already done?" checks are written here once, for every store; an adapter supplies its manager's primitives:

- ``_snapshot(repair)``: the stage map and the versions the manager knows, with the token its writes compare against;
- ``_write_stages(snapshot, stages, staged)``: replace the stage map if nobody wrote since ``snapshot`` (else
  :class:`StagingConflict` and nothing changed), first writing ``staged`` as a new PENDING version if given;
- ``_read_value``, ``_delete``, ``_delete_secret``, ``_describe``, ``_create``, ``_list``; where dating the
  versions costs another call, ``_version_dates`` (a ``describe(dated=True)`` only); and
- ``_condition`` with the table ``ERRORS``: its SDK's exceptions onto one store error per condition, applied in one
  place (``_call``), as httpx maps transport errors.

The same semantics for every store:

- ``stage(value, R)``: R's version holds a stage (staged, or promoted already): nothing changes, its id is returned.
  R's version exists without a stage (reverted, or discarded where the manager keeps a trace): StagingConflict, start
  a new rotation. Another rotation holds PENDING: StagingConflict. PENDING left on the CURRENT version, the state
  AWS's rotation functions finish in, is a finished rotation and holds nothing.
- ``promote(R)``: R CURRENT: nothing to do (a PENDING left on it is removed). R PENDING: it becomes CURRENT and the
  old CURRENT PREVIOUS. Otherwise StagingConflict if another rotation holds PENDING, else VersionNotFound.
- ``revert(R, P)``: R CURRENT: CURRENT goes back to PREVIOUS and PREVIOUS to P, the version that was PREVIOUS before
  the rotation. P must be an older version the store still has (or None: no PREVIOUS); anything else is
  VersionNotFound with nothing changed: a wrong record is shown to a person, never guessed at. R only PENDING: PENDING
  is dropped (the version stays for discard). R without a stage: nothing to undo.
- ``discard(R)``: a version at CURRENT or PREVIOUS is never touched; otherwise PENDING is dropped and the version
  destroyed (or, where the manager cannot destroy, left without any label).
- ``prune(keep)``: the versions no stage points to are destroyed, but the newest ``keep``.
- ``delete()``: the secret goes with every version (what a restore's rollback does to a secret it created); a
  secret that does not exist: nothing to do.

Values are plain strings (JSON for structured secrets); they never appear in an exception message, a ``repr`` or a
description. Every value read or written is registered for log redaction. A version id names one value for good, so
this process keeps the values it has read, and reads each at most once (see :class:`_ValueCache`).
"""

from __future__ import annotations

import abc
import contextlib
import enum
import re
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict

from redaction import register_secret
from stores.errors import (
    InvalidRequest,
    InvalidRotationId,
    InvalidStoreURI,
    SecretNotFound,
    StagingConflict,
    StoreError,
    VersionNotFound,
)
from stores.uri import SecretURI

T = TypeVar("T")
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


class Stage(enum.StrEnum):
    CURRENT = "CURRENT"
    PENDING = "PENDING"
    PREVIOUS = "PREVIOUS"


class VersionInfo(BaseModel):
    """One version of a secret, without its value."""

    model_config = ConfigDict(frozen=True)

    version_id: str
    stages: tuple[Stage, ...] = ()
    created_at: datetime | None = None


class SecretDescription(BaseModel):
    """What a store can say about a secret without revealing it."""

    model_config = ConfigDict(frozen=True)

    uri: str
    versions: tuple[VersionInfo, ...]

    def version_at(self, stage: Stage) -> str | None:
        return next((v.version_id for v in self.versions if stage in v.stages), None)


class StageMap(BaseModel):
    """Which version holds each stage (at most one each)."""

    model_config = ConfigDict(frozen=True)

    current: str | None = None
    pending: str | None = None
    previous: str | None = None

    def at(self, stage: Stage) -> str | None:
        return getattr(self, stage.name.lower())

    def stages_of(self, version_id: str) -> tuple[Stage, ...]:
        return tuple(stage for stage in Stage if self.at(stage) == version_id)

    @property
    def holder(self) -> str | None:
        """The version of the rotation in progress; a PENDING left on CURRENT is a finished rotation."""
        return self.pending if self.pending != self.current else None

    def but(self, **changes: str | None) -> StageMap:
        return self.model_copy(update=changes)


@dataclass(frozen=True)
class Snapshot:
    """One read of a secret's stage map, as an adapter's ``_snapshot`` returns it."""

    stages: StageMap
    versions: frozenset[str]  # every version the manager still knows, with or without a stage
    # What the adapter's writes compare against (revision, etag, resourceVersion, its whole read: values too).
    token: Any = field(default=None, repr=False)
    staged_by: Mapping[str, str] = field(default_factory=dict)  # rotation id -> version id, where they differ
    forgotten: frozenset[str] = frozenset()  # ids of versions gone with their value, remembered so as not to reuse
    values: Mapping[str, str] = field(default_factory=dict, repr=False)  # values the same read returned

    def version_of(self, rotation_id: str) -> str | None:
        """The version ``rotation_id`` staged, if the manager still knows it."""
        version = self.staged_by.get(rotation_id, rotation_id)
        return version if version in self.versions else None


@dataclass(frozen=True)
class Staged:
    """A value to write as the new PENDING version of a rotation."""

    rotation_id: str
    value: str = field(repr=False)


class _ValueCache:
    """The values this process has read or written, by (secret identity, version id).

    A version id names one immutable value, so a rotation reading the same version in several steps asks the service
    once. Bounded in size, and in age so that a secret deleted and created again under the same name (where the
    manager reuses version ids: Vault's ``kv-1``, Google's ``1``) is read afresh within minutes in a long-lived
    process.
    """

    MAX_ENTRIES, MAX_AGE_S = 512, 600.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str], tuple[float, str]] = {}  # in the order written

    def get(self, key: tuple[str, str]) -> str | None:
        with self._lock:
            written, value = self._entries.get(key, (0.0, None))
        return value if time.monotonic() - written <= self.MAX_AGE_S else None

    def put(self, key: tuple[str, str], value: str) -> None:
        with self._lock:
            self._entries.pop(key, None)
            self._entries[key] = (time.monotonic(), value)
            while len(self._entries) > self.MAX_ENTRIES:
                del self._entries[next(iter(self._entries))]  # the oldest written

    def drop(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._entries.pop(key, None)


_values = _ValueCache()
_clients: dict[Hashable, Any] = {}
_clients_lock = threading.Lock()


def shared_client(key: Hashable, build: Callable[[], T]) -> T:
    """The SDK client for one configuration, built once per process (a client costs a credential chain, a TLS
    session, sometimes a login) and shared by every store object; SDK clients are thread-safe."""
    with _clients_lock:
        if key in _clients:
            return _clients[key]
    built = build()  # outside the lock: a login may take a while, and a failure caches nothing
    with _clients_lock:
        return _clients.setdefault(key, built)


def check_value(value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"a secret value must be a str (JSON for structured secrets), not {type(value).__name__}")


class SecretStore(abc.ABC):
    """One secret in one secret manager, named by a :class:`SecretURI` (see the module docstring)."""

    #: The URI options this store accepts, each with how to write it (for the error message).
    OPTIONS: ClassVar[dict[str, str]] = {}
    #: The rotation ids this manager can use to name a version, and the rule in words (for the error message).
    ROTATION_ID: ClassVar[re.Pattern[str]] = re.compile(r"[A-Za-z0-9._:-]{1,100}")
    ROTATION_ID_RULE: ClassVar[str] = "use 1-100 letters, digits, '.', '_', ':' or '-', for example a UUID"
    #: The mapping table: condition -> (the store error, what to do); ``{store.…}`` names this store's attributes.
    ERRORS: ClassVar[dict[str, tuple[type[StoreError], str]]] = {}
    #: Whether this process keeps the values it read (remote stores: a call saved; a local file is as cheap to read
    #: again, and re-reading it checks its authentication every time).
    CACHE_VALUES: ClassVar[bool] = True
    #: Whether the service itself removes a version once no stage points to it (Secrets Manager does): then
    #: :meth:`prune` has nothing to find, and saves the call that would look.
    REMOVES_UNSTAGED_VERSIONS: ClassVar[bool] = False

    def __init__(self, uri: SecretURI) -> None:
        unknown = set(uri.options) - set(self.OPTIONS)
        if unknown:
            accepted = ", ".join(self.OPTIONS.values()) or "no options"
            raise InvalidStoreURI(
                f"unknown option(s) {', '.join(sorted(unknown))} in {uri.display}: the {uri.scheme} store accepts "
                f"{accepted}"
            )
        self.uri = uri.model_copy(update={"options": self.canonical_options(uri)})

    def canonical_options(self, uri: SecretURI) -> dict[str, str]:
        """``uri``'s options without those that say what this store would do anyway, so that every spelling of
        one secret has one identity (``self.uri.display``)."""
        return dict(uri.options)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri.display!r})"

    def _url_option(self, name: str, *, tls_only: bool = False) -> str | None:
        """The URL option ``name``: ``https://HOST[:PORT]``, or plain ``http://`` to a test server on this machine
        unless ``tls_only``; anything else would send credentials in clear or to a path nobody meant."""
        url = self.uri.options.get(name)
        parts = urlsplit(url or "")
        plain = not tls_only and parts.scheme == "http" and parts.hostname in _LOOPBACK
        if url is not None and ((parts.scheme != "https" and not plain) or not parts.hostname or parts.path.strip("/")):
            also = "TLS only" if tls_only else "or http:// to a test server on 127.0.0.1"
            raise InvalidStoreURI(
                f"{name} {url!r} in {self.uri.display} is not a URL it may use: https://HOST ({also})"
            )
        return url

    # --- the interface ----------------------------------------------------------------------------------------------

    def create(self, value: str) -> str:
        """Create the secret with a first CURRENT version; :class:`SecretExists` if it exists. Returns its id."""
        check_value(value)
        with self._session(write=True):
            version = self._create(value)
        self._remember(version, value)
        return version

    def read(self, stage: Stage = Stage.CURRENT) -> str:
        """The value at ``stage``; :class:`VersionNotFound` if no version carries it."""
        with self._session(write=False):
            return self._read_stage(Stage(stage))

    def read_version(self, version_id: str) -> str:
        """The value of one version; :class:`VersionNotFound` if it does not exist."""
        with self._session(write=False):
            return self._value(version_id)

    def describe(self, dated: bool = False) -> SecretDescription:
        """Versions (oldest first), stages and the dates the store gives with them; never values. ``dated``: also the
        dates that cost another call to the store (AWS's), for a report that judges ages."""
        with self._session(write=False):
            snapshot = self._fresh(repair=False)
            described = self._describe(snapshot)
            if dated and any(t is None for _, t in described):
                dates = self._version_dates(snapshot)
                described = [(v, t or dates.get(v)) for v, t in described]
        versions = (VersionInfo(version_id=v, stages=snapshot.stages.stages_of(v), created_at=t) for v, t in described)
        return SecretDescription(uri=self.uri.display, versions=tuple(versions))

    def list(self) -> list[str]:
        """Names of the secrets in the same place (same file, account and region, mount, namespace...)."""
        with self._session(write=False):
            return self._list()

    def stage(self, value: str, rotation_id: str) -> str:
        """Store ``value`` as the PENDING version of ``rotation_id``; returns the version id."""
        check_value(value)
        return self._stage(rotation_id, lambda _: value)

    def stage_from_current(self, rotation_id: str, build: Callable[[str], str]) -> str:
        """Stage ``build(CURRENT's value)`` unless ``rotation_id`` staged a version already; returns its id.

        ``build`` runs only when something is to be staged, so a generated value is generated once per rotation
        however often the step is retried; and CURRENT is read from the same read of the stage map.
        """
        return self._stage(rotation_id, lambda snapshot: build(self._current_value(snapshot)))

    def promote(self, rotation_id: str) -> None:
        """Make the PENDING version of ``rotation_id`` CURRENT; the old CURRENT becomes PREVIOUS."""
        self._check_rotation_id(rotation_id)
        with self._session(write=True):
            snapshot = self._fresh()
            stages, version = snapshot.stages, snapshot.version_of(rotation_id)
            if version is not None and version == stages.current:
                if stages.pending == version:  # a promotion interrupted before it removed PENDING
                    self._write_stages(snapshot, stages.but(pending=None))
                return
            if version is None or version != stages.pending:
                self._refuse_if_held(stages, f"promote rotation {rotation_id!r}")
                raise VersionNotFound(
                    f"rotation {rotation_id!r} has no PENDING version in {self.uri.display}: stage it before "
                    "promoting; nothing was changed"
                )
            self._write_stages(snapshot, StageMap(current=version, previous=stages.current))

    def prepare_promotion(self, rotation_id: str) -> Callable[[], None]:
        """:meth:`promote` split in two, for a promotion that must follow another change as closely as possible (a
        single user's new password): the stage map is read now, and the returned call makes only the write that
        moves CURRENT (PENDING stays on the promoted version, as AWS's rotation functions leave it: a finished
        rotation, see the module docstring). When there is nothing to prepare it is the ordinary, idempotent
        :meth:`promote`; a write that finds the map changed since is :class:`StagingConflict`, nothing changed."""
        self._check_rotation_id(rotation_id)
        with self._session(write=False):
            snapshot = self._fresh()
        stages, version = snapshot.stages, snapshot.version_of(rotation_id)
        if version is None or version != stages.pending or version == stages.current:
            return lambda: self.promote(rotation_id)
        promoted = StageMap(current=version, previous=stages.current, pending=version)

        def write() -> None:
            with self._session(write=True):
                self._write_stages(snapshot, promoted)

        return write

    def revert(self, rotation_id: str, previous_version: str | None) -> None:
        """Undo :meth:`promote` of ``rotation_id``; ``previous_version`` is the version that was PREVIOUS before it
        (recorded when the rotation was planned) and gets PREVIOUS back. See the module docstring."""
        self._check_rotation_id(rotation_id)
        with self._session(write=True):
            snapshot = self._fresh()
            stages, version = snapshot.stages, snapshot.version_of(rotation_id)
            if version is None:
                return
            if version == stages.current:
                if stages.previous is None:
                    raise VersionNotFound(
                        f"cannot revert rotation {rotation_id!r} of {self.uri.display}: no PREVIOUS version to make "
                        "CURRENT again; stage and promote a known good value instead"
                    )
                self._check_previous(snapshot, rotation_id, previous_version, stages.previous)
                self._write_stages(snapshot, StageMap(current=stages.previous, previous=previous_version))
            elif version == stages.previous and previous_version != version:
                # A revert interrupted between its two writes in a manager that hands PREVIOUS to the version
                # CURRENT leaves (AWS's label move): CURRENT is back already, PREVIOUS is not.
                self._check_previous(snapshot, rotation_id, previous_version, stages.current)
                pending = None if stages.pending == version else stages.pending
                self._write_stages(snapshot, stages.but(previous=previous_version, pending=pending))
            elif version == stages.pending:
                self._write_stages(snapshot, stages.but(pending=None))

    def discard(self, rotation_id: str) -> None:
        """Remove the staged version of ``rotation_id``; one at CURRENT or PREVIOUS, or none, changes nothing."""
        self._check_rotation_id(rotation_id)
        with self._session(write=True):
            snapshot = self._fresh()
            stages, version = snapshot.stages, snapshot.version_of(rotation_id)
            if version is None or version in (stages.current, stages.previous):
                return
            if version == stages.pending:
                self._write_stages(snapshot, stages.but(pending=None))
            self._delete(snapshot, version)
        self._forget(version)

    def prune(self, keep: int = 0) -> list[str]:
        """Destroy the versions no stage points to, except the newest ``keep``; returns the ids destroyed.

        Call it once a rotation is past its point of no return (retired): before that, the version its promotion
        pushed out of PREVIOUS is what a revert gives PREVIOUS back.
        """
        if not isinstance(keep, int) or keep < 0:
            raise InvalidRequest(f"keep={keep!r} for {self.uri.display}: give how many old versions to keep, 0 or more")
        if self.REMOVES_UNSTAGED_VERSIONS:
            return []
        with self._session(write=True):
            snapshot = self._fresh()
            unstaged = [v for v, _ in self._describe(snapshot) if not snapshot.stages.stages_of(v)]
            doomed = unstaged[: max(len(unstaged) - keep, 0)]
            for version in doomed:
                self._delete(snapshot, version)
        for version in doomed:
            self._forget(version)
        return doomed

    def delete(self) -> bool:
        """Delete the secret and every version of it; False if there was none (already deleted)."""
        with self._session(write=True):
            try:
                snapshot = self._fresh(repair=False)
            except SecretNotFound:
                return False
            self._delete_secret(snapshot)
        for version in snapshot.versions:
            self._forget(version)
        return True

    # --- the transitions' shared parts ------------------------------------------------------------------------------

    def _stage(self, rotation_id: str, make: Callable[[Snapshot], str]) -> str:
        self._check_rotation_id(rotation_id)
        with self._session(write=True):
            snapshot = self._fresh()
            version = snapshot.version_of(rotation_id)
            if version is not None and snapshot.stages.stages_of(version):
                return version
            if version is not None or rotation_id in snapshot.forgotten:
                raise StagingConflict(
                    f"rotation {rotation_id!r} of {self.uri.display} was reverted or discarded (its version has no "
                    "stage left): start a new rotation with a new id"
                )
            self._refuse_if_held(snapshot.stages, f"stage rotation {rotation_id!r}")
            value = make(snapshot)
            check_value(value)
            version = self._write_stages(snapshot, snapshot.stages.but(pending=None), Staged(rotation_id, value))
        assert version is not None
        self._remember(version, value)
        return version

    def _refuse_if_held(self, stages: StageMap, action: str) -> None:
        if stages.holder is not None:
            raise StagingConflict(
                f"version {stages.holder!r} of another rotation holds the PENDING stage of {self.uri.display}: "
                f"finish it (promote) or roll it back (revert, discard) before you {action}; nothing was changed"
            )

    def _check_previous(self, snapshot: Snapshot, rotation_id: str, previous: str | None, restored: str | None) -> None:
        if previous is not None and (previous in (rotation_id, restored) or previous not in snapshot.versions):
            raise VersionNotFound(
                f"cannot revert rotation {rotation_id!r} of {self.uri.display}: version {previous!r}, recorded as "
                "PREVIOUS before the rotation, is not an older version of this secret; nothing was changed. Check "
                "the rotation journal (a revert with no previous version restores CURRENT and leaves no PREVIOUS)"
            )

    def _check_rotation_id(self, rotation_id: str) -> None:
        if not isinstance(rotation_id, str) or not self.ROTATION_ID.fullmatch(rotation_id):
            raise InvalidRotationId(
                f"rotation id {rotation_id!r} cannot name a version in {self.uri.display}: {self.ROTATION_ID_RULE}"
            )

    def _fresh(self, repair: bool = True) -> Snapshot:
        snapshot = self._snapshot(repair=repair)
        for version, value in snapshot.values.items():
            self._remember(version, value)
        return snapshot

    def _read_stage(self, stage: Stage) -> str:
        """The value at ``stage``; a manager that answers it in one call overrides this."""
        snapshot = self._fresh(repair=False)
        version = snapshot.stages.at(stage)
        if version is None:
            raise VersionNotFound(f"no version of {self.uri.display} is {stage.value}")
        return self._value(version, snapshot)

    def _current_value(self, snapshot: Snapshot) -> str:
        if snapshot.stages.current is None:
            raise VersionNotFound(f"no version of {self.uri.display} is CURRENT: create the secret's first value")
        return self._value(snapshot.stages.current, snapshot)

    def _value(self, version_id: str, snapshot: Snapshot | None = None) -> str:
        cached = _values.get((self.uri.display, version_id)) if self.CACHE_VALUES else None
        if cached is not None:
            return cached
        try:
            value = self._read_value(version_id, snapshot)
        except (SecretNotFound, VersionNotFound):
            raise self._missing_version(f"{self.uri.display} has no version {version_id!r}") from None
        self._remember(version_id, value)
        return value

    def _missing_version(self, message: str) -> VersionNotFound:
        """For a manager that answers "not found" alike for a secret and a version: ask which one is missing."""
        self._snapshot(repair=False)  # raises SecretNotFound when it is the secret
        return VersionNotFound(message)

    def _remember(self, version_id: str, value: str) -> None:
        register_secret(value)
        if self.CACHE_VALUES:
            _values.put((self.uri.display, version_id), value)

    def _forget(self, version_id: str) -> None:
        _values.drop((self.uri.display, version_id))

    def _translate(self, exc: Exception, action: str) -> StoreError | None:
        """The store error for an exception raised while doing ``action``; None if it is not the SDK's.

        One message shape for every store: what could not be done, for which secret, the SDK's code (never its
        text, which can quote a request), and what to do, from the adapter's table ``ERRORS``.
        """
        found = self._condition(exc, action)
        if found is None:
            return None
        kind, advice = self.ERRORS[found[0]]
        detail = f" ({found[1]})" if found[1] else ""
        return kind(f"could not {action} for {self.uri.display}{detail}: {advice.format(store=self, action=action)}")

    def _call(self, action: str, fn: Callable[[], T]) -> T:
        """Run one SDK call; its exception becomes the store error ``_translate`` maps it to.

        The store error is raised outside the ``except`` block, so the SDK's exception (whose text can quote a
        request's values) is not chained to it.
        """
        try:
            return fn()
        except Exception as exc:
            error = self._translate(exc, action)
            if error is None:
                raise
        raise error

    @contextlib.contextmanager
    def _session(self, *, write: bool) -> Iterator[None]:
        """Around each operation; a store with transactions makes the operation one."""
        yield

    # --- the primitives each adapter supplies ----------------------------------------------------------------------

    @abc.abstractmethod
    def _condition(self, exc: Exception, action: str) -> tuple[str, str] | None:
        """The condition (a key of ``ERRORS``) and the SDK's code for one of its exceptions; None if not the SDK's."""

    @abc.abstractmethod
    def _snapshot(self, repair: bool) -> Snapshot:
        """The stage map and the versions, or :class:`SecretNotFound`; ``repair`` (before a change): first finish
        what a call of this store that crashed half-way left."""

    @abc.abstractmethod
    def _write_stages(self, snapshot: Snapshot, stages: StageMap, staged: Staged | None = None) -> str | None:
        """Make ``stages`` the stage map if it is still the one in ``snapshot``, else :class:`StagingConflict` with
        nothing changed. With ``staged``, write it first as a new version and point PENDING at it (``stages.pending``
        is then ignored); returns its id."""

    @abc.abstractmethod
    def _read_value(self, version_id: str, snapshot: Snapshot | None) -> str:
        """One version's value; :class:`VersionNotFound` or :class:`SecretNotFound` if there is none. ``snapshot``:
        the stage map read just before in the same operation, if any (a manager may find the version there)."""

    @abc.abstractmethod
    def _delete(self, snapshot: Snapshot, version_id: str) -> None:
        """Destroy a version no stage points to (``snapshot`` was read before its stage was dropped)."""

    @abc.abstractmethod
    def _delete_secret(self, snapshot: Snapshot) -> None:
        """Delete the secret with every version, for good where the manager keeps deleted secrets (``snapshot``
        read just before); a secret gone meanwhile is not an error."""

    @abc.abstractmethod
    def _describe(self, snapshot: Snapshot) -> list[tuple[str, datetime | None]]:
        """The versions (``snapshot`` read just before), oldest first, with their creation times where known."""

    def _version_dates(self, snapshot: Snapshot) -> dict[str, datetime]:
        """Creation times of versions that ``_describe`` gives without one, where the store has them at the cost of
        another call; none by default."""
        return {}

    @abc.abstractmethod
    def _create(self, value: str) -> str:
        """Create the secret with ``value`` as CURRENT; :class:`SecretExists` if it exists."""

    @abc.abstractmethod
    def _list(self) -> list[str]:
        """Names of the secrets in the same place."""
