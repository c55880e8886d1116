"""Google Secret Manager: one secret, its numbered versions, the stages kept as version aliases.

Layout of ``gcp://PROJECT/SECRET_ID[?endpoint=URL]``:

- a store version id is Secret Manager's version number (``"3"``);
- the secret's version aliases ``current``, ``pending`` and ``previous`` name the versions at each stage, so
  applications read ``projects/PROJECT/secrets/SECRET_ID/versions/current``. They must not read ``latest``: while
  a rotation is staged the latest version is the PENDING one;
- the secret's annotations ``rotation.<rotation id>`` record which version each rotation staged. Before adding a
  version, ``stage`` records its intent as ``adding:<highest version number then>``, so a ``stage`` retried after a
  crash between adding the version and recording it adopts that version instead of adding a second one.

Every change of aliases and annotations is a ``secrets.patch`` carrying the etag that was read, so a concurrent writer
makes it fail (FAILED_PRECONDITION) and this store raises :class:`~stores.errors.StagingConflict` with nothing
changed. A discarded version is destroyed (its payload is erased for good, so a value that never went live cannot be
re-enabled); a reverted one stays enabled with no alias. A secret with versions but no ``current`` alias (written by
other tools) has its newest enabled version as CURRENT until the first rotation pins the alias.

Credentials: application default credentials (``GOOGLE_APPLICATION_CREDENTIALS``, ``gcloud auth
application-default login``, or the metadata server). The client speaks the REST API (``transport="rest"``); the
``endpoint`` option points it elsewhere (a private endpoint, or ``http://127.0.0.1:PORT`` for a local test double:
plain HTTP is accepted for a loopback address only).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import ClassVar, TypeVar
from urllib.parse import urlsplit

import requests
from google.api_core import exceptions as gexc
from google.api_core.client_options import ClientOptions
from google.api_core.retry import Retry, if_exception_type
from google.auth import exceptions as auth_errors
from google.auth.credentials import Credentials
from google.cloud import secretmanager_v1 as sm
from google.protobuf import field_mask_pb2

from stores.base import SecretDescription, SecretStore, Stage, VersionInfo
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

_ALIASES = {Stage.CURRENT: "current", Stage.PENDING: "pending", Stage.PREVIOUS: "previous"}
_PREFIX = "rotation."
# Annotation keys: at most 63 characters, alphanumeric at both ends.
_ROTATION_ID = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,52}[A-Za-z0-9])?")
_KEPT_UNSTAGED = 16  # rotation annotations kept for versions with no alias; annotations are limited to 16 KiB
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
_TIMEOUT = 30.0
# Reads are retried on transient errors; writes are not (a step is retried as a whole, and is idempotent).
_READ_RETRY = Retry(
    predicate=if_exception_type(gexc.ServiceUnavailable, gexc.InternalServerError, requests.ConnectionError),
    initial=0.2,
    maximum=2.0,
    timeout=10.0,
)
_T = TypeVar("_T")


def _check_rotation_id(rotation_id: str) -> None:
    if not _ROTATION_ID.fullmatch(rotation_id):
        raise ValueError(
            f"rotation id {rotation_id!r} cannot name a Secret Manager annotation: use 1-54 letters, digits, '.', "
            "'_' or '-', starting and ending with a letter or digit"
        )


def _number(version_name: str) -> int:
    return int(version_name.rpartition("/")[2])


@dataclass(frozen=True)
class _State:
    """One read of the secret: its aliases, annotations and etag."""

    aliases: dict[str, int]
    annotations: dict[str, str]
    etag: str

    def at(self, stage: Stage) -> int | None:
        return self.aliases.get(_ALIASES[stage])

    def recorded(self, rotation_id: str) -> str | None:
        return self.annotations.get(_PREFIX + rotation_id)

    def rotation_of(self, number: int) -> str | None:
        return next((k.removeprefix(_PREFIX) for k, v in self.annotations.items() if v == str(number)), None)

    def pruned(self, annotations: dict[str, str], aliases: dict[str, int]) -> dict[str, str]:
        """``annotations`` without the records of old rotations whose versions no longer carry a stage."""
        unstaged = sorted(
            (
                k
                for k, v in annotations.items()
                if k.startswith(_PREFIX) and v.isdigit() and int(v) not in aliases.values()
            ),
            key=lambda k: int(annotations[k]),
        )
        return {k: v for k, v in annotations.items() if k not in unstaged[:-_KEPT_UNSTAGED]}


class GcpStore(SecretStore):
    """One secret in Google Secret Manager (see the module docstring for the layout)."""

    OPTIONS: ClassVar[dict[str, str]] = {"endpoint": "endpoint=URL"}

    def __init__(self, uri: SecretURI, credentials: Credentials | None = None) -> None:
        super().__init__(uri)
        self.endpoint = uri.options.get("endpoint")
        if self.endpoint is not None:
            parts = urlsplit(self.endpoint)
            if parts.scheme not in ("https", "http") or not parts.hostname:
                raise InvalidStoreURI(
                    f"endpoint {self.endpoint!r} in {uri.display} is not a URL: use https://HOST[:PORT]"
                )
            if parts.scheme == "http" and parts.hostname not in _LOOPBACK:
                raise InvalidStoreURI(
                    f"endpoint {self.endpoint!r} in {uri.display} is plain HTTP to another host: use https:// "
                    "(plain HTTP is accepted for a local test server on 127.0.0.1 only)"
                )
        self.project, self.secret_id = uri.location, uri.name
        self.name = f"projects/{self.project}/secrets/{self.secret_id}"
        self._credentials = credentials

    @cached_property
    def client(self) -> sm.SecretManagerServiceClient:
        options = ClientOptions(api_endpoint=self.endpoint) if self.endpoint else None
        try:
            return sm.SecretManagerServiceClient(
                credentials=self._credentials, transport="rest", client_options=options
            )
        except auth_errors.DefaultCredentialsError:
            pass
        raise StorePermissionDenied(
            f"no Google credentials for {self.uri.display}: run `gcloud auth application-default login`, or set "
            "GOOGLE_APPLICATION_CREDENTIALS to a service-account key file, or run where a metadata server gives one"
        )

    # --- errors ---------------------------------------------------------------------------------------------------
    def _call(self, action: str, fn: Callable[[], _T], missing: Callable[[], StoreError] | None = None) -> _T:
        """Run one API call and turn its failures into store errors that name the secret, never a value."""
        try:
            return fn()
        except (gexc.GoogleAPIError, auth_errors.GoogleAuthError, requests.RequestException) as exc:
            error = self._translate(action, exc, missing)
        # Raised outside the except block so that the SDK's exception is not chained onto ours.
        raise error

    def _translate(self, action: str, exc: Exception, missing: Callable[[], StoreError] | None) -> StoreError:
        where = f"{self.uri.display} ({self.name})"
        status = _status(exc)
        if isinstance(exc, gexc.NotFound):
            return missing() if missing else self._no_secret()
        if status == "FAILED_PRECONDITION" and "etag" in str(getattr(exc, "message", "")):
            return StagingConflict(
                f"could not {action} for {where}: another writer changed the secret since it was read (etag "
                "mismatch); nothing was changed by this step, retry it"
            )
        if status == "FAILED_PRECONDITION" and missing is not None:
            return missing()
        if isinstance(exc, gexc.Unauthenticated | auth_errors.RefreshError):
            return StorePermissionDenied(
                f"Google rejected the credentials used to {action} for {where}: renew them (`gcloud auth "
                "application-default login`) or check GOOGLE_APPLICATION_CREDENTIALS"
            )
        if isinstance(exc, gexc.PermissionDenied | gexc.Forbidden):
            return StorePermissionDenied(
                f"permission denied to {action} for {where}: grant the caller roles/secretmanager.admin on the "
                f"secret (or secretAccessor and secretVersionManager), and check that project {self.project!r} "
                f"exists ({getattr(exc, 'message', '')})"
            )
        if isinstance(exc, gexc.Conflict | gexc.Aborted):
            return StagingConflict(f"could not {action} for {where}: a concurrent change conflicted; retry the step")
        if isinstance(
            exc,
            gexc.ServiceUnavailable
            | gexc.InternalServerError
            | gexc.DeadlineExceeded
            | gexc.RetryError
            | requests.RequestException,
        ):
            return StoreUnavailable(
                f"Secret Manager{' at ' + self.endpoint if self.endpoint else ''} could not {action} for "
                f"{self.uri.display} ({type(exc).__name__}): check the network and retry"
            )
        return StoreError(f"Secret Manager refused to {action} for {where}: {status or type(exc).__name__}")

    def _no_secret(self) -> SecretNotFound:
        return SecretNotFound(
            f"secret {self.secret_id!r} does not exist in project {self.project!r} ({self.uri.display}): check the "
            "project and secret id, or create it first"
        )

    # --- reads ----------------------------------------------------------------------------------------------------
    def _state(self) -> _State:
        secret = self._call(
            "read the secret", lambda: self.client.get_secret(name=self.name, retry=_READ_RETRY, timeout=_TIMEOUT)
        )
        return _State(dict(secret.version_aliases), dict(secret.annotations), secret.etag)

    def _versions(self) -> list[sm.SecretVersion]:
        """Every version, oldest first."""
        pages = self._call(
            "list the versions",
            lambda: list(self.client.list_secret_versions(parent=self.name, retry=_READ_RETRY, timeout=_TIMEOUT)),
        )
        return sorted(pages, key=lambda v: _number(v.name))

    def _current(self, state: _State) -> int | None:
        """CURRENT's version number: the ``current`` alias, else (a secret from other tools) the newest enabled one."""
        if state.at(Stage.CURRENT) is not None:
            return state.at(Stage.CURRENT)
        enabled = [_number(v.name) for v in self._versions() if v.state == sm.SecretVersion.State.ENABLED]
        return max(enabled) if enabled else None

    def _access(self, number: int, what: str) -> str:
        missing = lambda: VersionNotFound(f"{what} of {self.uri.display} does not exist or is disabled")  # noqa: E731
        answer = self._call(
            f"read {what}",
            lambda: self.client.access_secret_version(
                name=f"{self.name}/versions/{number}", retry=_READ_RETRY, timeout=_TIMEOUT
            ),
            missing,
        )
        try:
            return answer.payload.data.decode()
        except UnicodeDecodeError:
            raise StoreError(f"{what} of {self.uri.display} is not UTF-8 text; this store keeps text values") from None

    def _staged(self, state: _State, rotation_id: str) -> int | None:
        """The version staged by ``rotation_id``, unless it was discarded (destroyed)."""
        recorded = state.recorded(rotation_id)
        if recorded is None or not recorded.isdigit():
            return None
        number = int(recorded)
        version = self._call(
            f"read version {number}",
            lambda: self.client.get_secret_version(
                name=f"{self.name}/versions/{number}", retry=_READ_RETRY, timeout=_TIMEOUT
            ),
            lambda: VersionNotFound(f"version {number} of {self.uri.display} does not exist"),
        )
        return None if version.state == sm.SecretVersion.State.DESTROYED else number

    def read(self, stage: Stage = Stage.CURRENT) -> str:
        stage = Stage(stage)
        state = self._state()
        number = self._current(state) if stage is Stage.CURRENT else state.at(stage)
        if number is None:
            raise VersionNotFound(f"no version of {self.uri.display} is {stage.value}")
        return self._access(number, f"the {stage.value} version {number}")

    def read_version(self, version_id: str) -> str:
        self._state()  # a missing secret is SecretNotFound, not VersionNotFound
        if not version_id.isdigit():
            raise VersionNotFound(f"{self.uri.display} has no version {version_id!r}: version ids are numbers")
        return self._access(int(version_id), f"version {version_id}")

    def describe(self) -> SecretDescription:
        state = self._state()
        held = {stage: self._current(state) if stage is Stage.CURRENT else state.at(stage) for stage in Stage}
        versions = []
        for version in self._versions():
            if version.state != sm.SecretVersion.State.ENABLED:
                continue
            number = _number(version.name)
            created = version.create_time
            versions.append(
                VersionInfo(
                    version_id=str(number),
                    stages=tuple(stage for stage in Stage if held[stage] == number),
                    created_at=created if isinstance(created, datetime) else None,
                )
            )
        return SecretDescription(uri=self.uri.display, versions=tuple(versions))

    def list(self) -> list[str]:
        secrets = self._call(
            "list the secrets",
            lambda: list(
                self.client.list_secrets(parent=f"projects/{self.project}", retry=_READ_RETRY, timeout=_TIMEOUT)
            ),
        )
        return sorted(s.name.rpartition("/")[2] for s in secrets)

    # --- writes ---------------------------------------------------------------------------------------------------
    def _patch(self, state: _State, action: str, aliases: dict[str, int], annotations: dict[str, str]) -> _State:
        """Replace aliases and annotations if the secret's etag is still the one read (else StagingConflict)."""
        annotations = state.pruned(annotations, aliases)
        secret = sm.Secret(name=self.name, etag=state.etag, version_aliases=aliases, annotations=annotations)
        mask = field_mask_pb2.FieldMask(paths=["version_aliases", "annotations"])
        written = self._call(
            action, lambda: self.client.update_secret(secret=secret, update_mask=mask, retry=None, timeout=_TIMEOUT)
        )
        return _State(dict(written.version_aliases), dict(written.annotations), written.etag)

    def _add(self, value: str) -> int:
        payload = sm.SecretPayload(data=value.encode())
        version = self._call(
            "add a version",
            lambda: self.client.add_secret_version(parent=self.name, payload=payload, retry=None, timeout=_TIMEOUT),
        )
        return _number(version.name)

    def _destroy(self, number: int) -> None:
        self._call(
            f"destroy version {number}",
            lambda: self.client.destroy_secret_version(
                request={"name": f"{self.name}/versions/{number}"}, retry=None, timeout=_TIMEOUT
            ),
            lambda: VersionNotFound(f"version {number} of {self.uri.display} is already destroyed"),
        )

    def create(self, value: str) -> str:
        secret = sm.Secret(replication=sm.Replication(automatic=sm.Replication.Automatic()))
        try:
            self._call(
                "create the secret",
                lambda: self.client.create_secret(
                    parent=f"projects/{self.project}", secret_id=self.secret_id, secret=secret, timeout=_TIMEOUT
                ),
            )
        except StagingConflict:
            # An empty secret is what a create interrupted before its first version leaves: finish it.
            if self._state().aliases or self._versions():
                raise SecretExists(f"secret {self.uri.display} already exists; nothing was written") from None
        state = self._state()
        number = self._add(value)
        self._patch(state, "record the CURRENT alias", {"current": number}, state.annotations)
        return str(number)

    def stage(self, value: str, rotation_id: str) -> str:
        _check_rotation_id(rotation_id)
        state = self._state()
        staged = self._staged(state, rotation_id)
        if staged is not None:
            return str(staged)
        pending = state.at(Stage.PENDING)
        if pending is not None:
            raise StagingConflict(
                f"{self.uri.display} already has a PENDING version {pending} staged by rotation "
                f"{state.rotation_of(pending)!r}: finish or roll back that rotation before staging {rotation_id!r}"
            )
        current = self._current(state)
        if current is None:
            raise VersionNotFound(f"{self.uri.display} has no enabled version to stage a rotation beside")
        key = _PREFIX + rotation_id
        versions = self._versions()
        intent = state.recorded(rotation_id) or ""
        adopted: int | None = None
        if intent.startswith("adding:"):
            after = int(intent.removeprefix("adding:"))
            written = [
                _number(v.name)
                for v in versions
                if _number(v.name) > after and v.state == sm.SecretVersion.State.ENABLED
            ]
            if len(written) > 1:
                raise StagingConflict(
                    f"{self.uri.display}: versions {written} were added while rotation {rotation_id!r} was staging; "
                    "someone else writes this secret: check who, then discard this rotation"
                )
            adopted = written[0] if written else None
        else:
            highest = max((_number(v.name) for v in versions), default=0)
            state = self._patch(
                state, "record the staging intent", state.aliases, {**state.annotations, key: f"adding:{highest}"}
            )
        number = adopted if adopted is not None else self._add(value)
        aliases = {**state.aliases, "current": current, "pending": number}
        try:
            self._patch(state, "record the PENDING alias", aliases, {**state.annotations, key: str(number)})
        except StagingConflict:
            if adopted is None:
                self._destroy(number)
            raise
        return str(number)

    def promote(self, rotation_id: str) -> None:
        state = self._state()
        number = self._staged(state, rotation_id)
        if number is None:
            raise VersionNotFound(f"{self.uri.display} has no version staged by rotation {rotation_id!r}")
        current, pending = self._current(state), state.at(Stage.PENDING)
        if pending not in (None, number):
            raise StagingConflict(
                f"{self.uri.display}: PENDING belongs to rotation {state.rotation_of(pending)!r}, not "
                f"{rotation_id!r}; nothing changed"
            )
        if current == number and pending is None:
            return
        aliases = {k: v for k, v in state.aliases.items() if k != "pending"}
        if current != number:
            aliases["current"] = number
            if current is not None:
                aliases["previous"] = current
        self._patch(state, "promote the PENDING version", aliases, state.annotations)

    def revert(self, rotation_id: str, previous_version: str | None) -> None:
        """Undo a promotion; a rotation that was only staged loses its PENDING alias (its version stays enabled)."""
        state = self._state()
        number = self._staged(state, rotation_id)
        if number is None:
            return
        aliases = dict(state.aliases)
        if state.at(Stage.PENDING) == number:
            del aliases["pending"]
            self._patch(state, "drop the PENDING alias", aliases, state.annotations)
            return
        if state.at(Stage.CURRENT) != number:
            return
        restored = state.at(Stage.PREVIOUS)
        if restored is None:
            raise VersionNotFound(
                f"cannot revert rotation {rotation_id!r} of {self.uri.display}: no PREVIOUS version to make CURRENT"
            )
        aliases["current"] = restored
        aliases.pop("previous")
        if previous_version and previous_version.isdigit() and self._enabled(int(previous_version)):
            aliases["previous"] = int(previous_version)
        self._patch(state, "revert the promotion", aliases, state.annotations)

    def _enabled(self, number: int) -> bool:
        return any(_number(v.name) == number and v.state == sm.SecretVersion.State.ENABLED for v in self._versions())

    def discard(self, rotation_id: str) -> None:
        """Drop the aliases of the staged version, then destroy it; a CURRENT version is left alone."""
        state = self._state()
        number = self._staged(state, rotation_id)
        if number is None or self._current(state) == number:
            return
        aliases = {k: v for k, v in state.aliases.items() if v != number}
        if aliases != state.aliases:
            self._patch(state, "drop the aliases of the discarded version", aliases, state.annotations)
        with contextlib.suppress(VersionNotFound):  # destroyed by an earlier attempt: what was asked is done
            self._destroy(number)


def _status(exc: Exception) -> str:
    """The canonical status name (``FAILED_PRECONDITION``...) of an API error answered over REST."""
    response = getattr(exc, "response", None)
    try:
        return str(response.json()["error"]["status"]) if response is not None else ""
    except (ValueError, KeyError, TypeError, AttributeError):
        return ""
