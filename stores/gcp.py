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
changed; aliases this store does not own are kept. A discarded or pruned version is destroyed (its payload is erased
for good, so a value that never went live cannot be re-enabled); its annotation stays, so its rotation id is not
staged again. A secret with versions but no ``current`` alias (written by other tools) has its newest enabled version
as CURRENT until the first rotation pins the alias. Every number up to the highest this store recorded names a
version (Secret Manager numbers them 1, 2, 3...), which is how a revert knows an older version without listing them.

Credentials: application default credentials (``GOOGLE_APPLICATION_CREDENTIALS``, ``gcloud auth
application-default login``, or the metadata server). The client speaks the REST API (``transport="rest"``); the
``endpoint`` option points it elsewhere (a private endpoint, or ``http://127.0.0.1:PORT`` for a local test double:
plain HTTP is accepted for a loopback address only).
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import ClassVar

import requests
from google.api_core import exceptions as gexc
from google.api_core.client_options import ClientOptions
from google.api_core.retry import Retry, if_exception_type
from google.auth import exceptions as auth_errors
from google.auth.credentials import Credentials
from google.cloud import secretmanager_v1 as sm
from google.protobuf import field_mask_pb2

from stores.base import SecretStore, Snapshot, Stage, Staged, StageMap, shared_client
from stores.errors import (
    InvalidRequest,
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
_KEPT_UNSTAGED = 16  # rotation annotations kept for versions with no alias; annotations are limited to 16 KiB
_TIMEOUT = 30.0
# Reads are retried on transient errors; writes are not (a step is retried as a whole, and is idempotent).
_READ_RETRY = Retry(
    predicate=if_exception_type(gexc.ServiceUnavailable, gexc.InternalServerError, requests.ConnectionError),
    initial=0.2,
    maximum=2.0,
    timeout=10.0,
)
_ERRORS: dict[str, tuple[type[StoreError], str]] = {
    "missing": (SecretNotFound, "secret {store.secret_id!r} does not exist in project {store.project!r}: check the "
                "project and secret id, or create it first"),
    "changed": (StagingConflict, "another writer changed the secret since it was read (etag mismatch); nothing was "
                "changed by this step, retry it"),
    "gone": (VersionNotFound, "the version is disabled or destroyed"),
    "rejected": (StorePermissionDenied, "Google rejected the credentials: renew them (`gcloud auth "
                 "application-default login`) or check GOOGLE_APPLICATION_CREDENTIALS"),
    "denied": (StorePermissionDenied, "grant the caller roles/secretmanager.admin on the secret (or secretAccessor "
               "and secretVersionManager), and check that project {store.project!r} exists"),
    "exists": (SecretExists, "the secret already exists; nothing was written"),
    "conflict": (StagingConflict, "a concurrent change conflicted; retry the step"),
    "unavailable": (StoreUnavailable, "Secret Manager could not be reached or failed: check the network and retry"),
    "invalid": (InvalidRequest, "Secret Manager refused the request as invalid"),
}  # fmt: skip


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

    def recorded(self) -> dict[str, int]:
        """Rotation id -> the version it staged."""
        return {
            k.removeprefix(_PREFIX): int(v)
            for k, v in self.annotations.items()
            if k.startswith(_PREFIX) and v.isdigit()
        }

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
    ERRORS = _ERRORS
    ROTATION_ID = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,52}[A-Za-z0-9])?")
    ROTATION_ID_RULE = (
        "it names a Secret Manager annotation: use 1-54 letters, digits, '.', '_' or '-', starting and ending with a "
        "letter or digit"
    )

    def __init__(self, uri: SecretURI, credentials: Credentials | None = None) -> None:
        super().__init__(uri)
        self.endpoint = self._url_option("endpoint")
        self.project, self.secret_id = uri.location, uri.name
        self.name = f"projects/{self.project}/secrets/{self.secret_id}"
        self._credentials = credentials

    @cached_property
    def client(self) -> sm.SecretManagerServiceClient:
        options = ClientOptions(api_endpoint=self.endpoint) if self.endpoint else None
        try:
            return shared_client(
                ("gcp", self.endpoint, self._credentials),
                lambda: sm.SecretManagerServiceClient(
                    credentials=self._credentials, transport="rest", client_options=options
                ),
            )
        except auth_errors.DefaultCredentialsError:
            raise StorePermissionDenied(
                f"no Google credentials for {self.uri.display}: run `gcloud auth application-default login`, or set "
                "GOOGLE_APPLICATION_CREDENTIALS to a service-account key file, or run where a metadata server gives one"
            ) from None

    def _condition(self, exc: Exception, action: str) -> tuple[str, str] | None:
        if not isinstance(exc, gexc.GoogleAPIError | auth_errors.GoogleAuthError | requests.RequestException):
            return None
        status = _status(exc) or type(exc).__name__
        if isinstance(exc, gexc.NotFound):
            return "missing", status
        if status == "FAILED_PRECONDITION":
            return ("changed" if "etag" in str(getattr(exc, "message", "")) else "gone"), status
        if isinstance(exc, gexc.Unauthenticated | auth_errors.RefreshError):
            return "rejected", status
        if isinstance(exc, gexc.PermissionDenied | gexc.Forbidden):
            return "denied", status
        if isinstance(exc, gexc.AlreadyExists) or status == "ALREADY_EXISTS":
            return "exists", status
        if isinstance(exc, gexc.Conflict | gexc.Aborted):
            return "conflict", status
        transient = gexc.ServiceUnavailable | gexc.InternalServerError | gexc.DeadlineExceeded | gexc.RetryError
        return ("unavailable" if isinstance(exc, transient | requests.RequestException) else "invalid"), status

    # --- primitives -----------------------------------------------------------------------------------------------
    def _snapshot(self, repair: bool) -> Snapshot:
        state = self._state()
        if repair:
            state = self._adopt_interrupted(state)
        held = {stage: state.at(stage) for stage in Stage}
        if held[Stage.CURRENT] is None:
            held[Stage.CURRENT] = self._newest_enabled()
        recorded = state.recorded()
        highest = max([n for n in held.values() if n] + list(recorded.values()), default=0)
        return Snapshot(
            stages=StageMap(**{stage.name.lower(): str(n) if n else None for stage, n in held.items()}),
            versions=frozenset(str(n) for n in range(1, highest + 1)),
            token=state,
            staged_by={rotation: str(n) for rotation, n in recorded.items()},
        )

    def _read_value(self, version_id: str, snapshot: Snapshot | None) -> str:
        if not version_id.isdigit():
            raise VersionNotFound(f"{self.uri.display} has no version {version_id!r}: version ids are numbers")
        answer = self._call(
            f"read version {version_id}",
            lambda: self.client.access_secret_version(
                name=f"{self.name}/versions/{version_id}", retry=_READ_RETRY, timeout=_TIMEOUT
            ),
        )
        try:
            return answer.payload.data.decode()
        except UnicodeDecodeError:
            raise InvalidRequest(
                f"version {version_id} of {self.uri.display} is not UTF-8 text; this store keeps text values"
            ) from None

    def _write_stages(self, snapshot: Snapshot, stages: StageMap, staged: Staged | None = None) -> str | None:
        state: _State = snapshot.token
        if staged is None:
            self._patch(state, "move the aliases", self._aliases(state, stages), state.annotations)
            return None
        key = _PREFIX + staged.rotation_id
        if key not in state.annotations:  # else an earlier attempt recorded its intent and added nothing
            highest = max((_number(v.name) for v in self._versions()), default=0)
            # Only one rotation stages at a time: an intent left by another is stale, and is dropped.
            kept = {k: v for k, v in state.annotations.items() if not v.startswith("adding:")}
            state = self._patch(state, "record the staging intent", state.aliases, {**kept, key: f"adding:{highest}"})
        number = self._add(staged.value)
        aliases = self._aliases(state, stages.but(pending=str(number)))
        try:
            self._patch(state, "record the PENDING alias", aliases, {**state.annotations, key: str(number)})
        except StagingConflict:
            self._destroy(number)
            raise
        return str(number)

    def _delete(self, snapshot: Snapshot, version_id: str) -> None:
        with contextlib.suppress(VersionNotFound):  # destroyed by an earlier attempt: what was asked is done
            self._destroy(int(version_id))

    def _delete_secret(self, snapshot: Snapshot) -> None:
        with contextlib.suppress(SecretNotFound):
            self._call("delete the secret", lambda: self.client.delete_secret(name=self.name, timeout=_TIMEOUT))

    def _describe(self, snapshot: Snapshot) -> list[tuple[str, datetime | None]]:
        enabled = [v for v in self._versions() if v.state == sm.SecretVersion.State.ENABLED]
        return [(str(_number(v.name)), v.create_time if isinstance(v.create_time, datetime) else None) for v in enabled]

    def _create(self, value: str) -> str:
        secret = sm.Secret(replication=sm.Replication(automatic=sm.Replication.Automatic()))
        try:
            self._call(
                "create the secret",
                lambda: self.client.create_secret(
                    parent=f"projects/{self.project}", secret_id=self.secret_id, secret=secret, timeout=_TIMEOUT
                ),
            )
        except SecretExists:
            # An empty secret is what a create interrupted before its first version leaves: finish it.
            if self._state().aliases or self._versions():
                raise
        state = self._state()
        number = self._add(value)
        self._patch(state, "record the CURRENT alias", {"current": number}, state.annotations)
        return str(number)

    def _list(self) -> list[str]:
        secrets = self._call(
            "list the secrets",
            lambda: list(
                self.client.list_secrets(parent=f"projects/{self.project}", retry=_READ_RETRY, timeout=_TIMEOUT)
            ),
        )
        return sorted(s.name.rpartition("/")[2] for s in secrets)

    # --- Secret Manager calls -------------------------------------------------------------------------------------
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

    def _newest_enabled(self) -> int | None:
        """CURRENT of a secret written by other tools (no ``current`` alias): its newest enabled version."""
        enabled = [_number(v.name) for v in self._versions() if v.state == sm.SecretVersion.State.ENABLED]
        return max(enabled, default=None)

    def _adopt_interrupted(self, state: _State) -> _State:
        """A stage that crashed after adding its version and before recording it: record that version as PENDING."""
        intents = [(k, v) for k, v in state.annotations.items() if k.startswith(_PREFIX) and v.startswith("adding:")]
        if not intents or state.at(Stage.PENDING) is not None:
            return state
        (key, intent), recorded = intents[0], set(state.recorded().values())  # one: a new intent replaces the old
        enabled = [_number(v.name) for v in self._versions() if v.state == sm.SecretVersion.State.ENABLED]
        written = [n for n in enabled if n > int(intent.removeprefix("adding:")) and n not in recorded]
        if len(written) > 1:
            raise StagingConflict(
                f"{self.uri.display}: versions {written} were added while rotation {key.removeprefix(_PREFIX)!r} was "
                "staging; someone else writes this secret: check who, then discard this rotation"
            )
        if not written:
            return state
        aliases, annotations = {**state.aliases, "pending": written[0]}, {**state.annotations, key: str(written[0])}
        return self._patch(state, "record an interrupted stage", aliases, annotations)

    def _aliases(self, state: _State, stages: StageMap) -> dict[str, int]:
        """The secret's aliases with this store's three set to ``stages``; others' aliases are kept."""
        ours = {_ALIASES[stage]: int(v) for stage in Stage if (v := stages.at(stage))}
        return {**{k: v for k, v in state.aliases.items() if k not in _ALIASES.values()}, **ours}

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
        )


def _status(exc: Exception) -> str:
    """The canonical status name (``FAILED_PRECONDITION``...) of an API error answered over REST."""
    response = getattr(exc, "response", None)
    try:
        return str(response.json()["error"]["status"]) if response is not None else ""
    except (ValueError, KeyError, TypeError, AttributeError):
        return ""
