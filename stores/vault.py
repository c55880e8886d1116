"""HashiCorp Vault, KV version 2: one Vault secret is one store secret; its stages live in custom metadata.

Invariant, for consumers: between two calls of this store, Vault's latest version (``vault kv get``, Vault Agent
templates, the Vault CSI provider, External Secrets) holds the CURRENT value, in its ``value`` field. A staged
(PENDING) value is never Vault's latest version, and no call of this store deletes or destroys the latest version.
So consumers may read the latest version and need know nothing of stages; only a rotation's own steps read PENDING.

Layout of ``vault://MOUNT/path/to/secret?namespace=NS``:

- every Vault version's data is ``{"value": "..."}``; a staged version also carries ``"rotation_id"`` and a value
  written again as the latest carries ``"copy_of"`` (its version id), so that a crashed call's writes can be found;
- custom metadata ``stage.current``, ``stage.pending``, ``stage.previous`` hold version ids, and
  ``version.<id>`` lists the Vault version numbers holding that id's value (``"4,7"``): :meth:`stage` writes the
  PENDING value and then the CURRENT value again on top of it, :meth:`promote` writes the PENDING value again as the
  latest, :meth:`revert` the restored one. A version id names one value for good, whichever numbers hold it. A
  number in no list is named ``kv-<number>``: the first version written by :meth:`create`, and versions written
  outside this tool. A secret written by other tools (no ``stage.current``) has its latest live version as CURRENT.
- A rotation writes three Vault versions (stage two, promote one; a revert one more), so keep ``max_versions`` (per
  secret or per mount; Vault's default is 10) at 10 or more, or PREVIOUS may be pruned before it is needed.

Crash safety: every mutating call first finishes what a crashed call left (versions newer than the last one
recorded: a staged value becomes PENDING, a copy is recorded) and, if Vault's latest version does not hold CURRENT,
writes CURRENT again as the latest. A latest version written outside this store is refused, not overwritten. Every
data write uses check-and-set with the version number just read, and every metadata write re-reads the metadata
first and refuses to go on if it changed, so a concurrent writer gets :class:`~stores.errors.StagingConflict`
instead of a lost update.

A discarded or pruned version is destroyed (its data erased for good); the map keeps its id, so that id is never
staged again.

Credentials: ``VAULT_ADDR``, ``VAULT_NAMESPACE`` (or ``?namespace=``), ``VAULT_CACERT`` (TLS is always verified),
then ``VAULT_TOKEN``, or AppRole (``VAULT_ROLE_ID`` + ``VAULT_SECRET_ID``, mount ``VAULT_APPROLE_MOUNT``), or
Kubernetes auth (``VAULT_K8S_ROLE``, the service-account token file, mount ``VAULT_K8S_MOUNT``). The client (and
its login) is made once per process for each set of these; a login token that expires needs a new process.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import hvac
import requests
from hvac import exceptions as vault_errors

from stores.base import SecretStore, Snapshot, Stage, Staged, StageMap, shared_client
from stores.errors import (
    InvalidRequest,
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

K8S_TOKEN_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/token"
_CAS_MISMATCH = "check-and-set parameter did not match"
_KV_ID = re.compile(r"kv-(\d+)")
_KEPT_UNSTAGED = 16  # version-map entries kept for versions without a stage; Vault allows 64 metadata keys
_KEPT_COPIES = 32  # Vault version numbers kept per version id; a metadata value may hold 512 bytes
_STAGE_KEYS = {Stage.CURRENT: "stage.current", Stage.PENDING: "stage.pending", Stage.PREVIOUS: "stage.previous"}
_ERRORS: dict[str, tuple[type[StoreError], str]] = {
    "unreachable": (StoreUnavailable, "Vault at {store.address} is unreachable: check VAULT_ADDR and the network"),
    "changed": (StagingConflict, "another writer changed the secret since it was read; nothing was written, retry"),
    "login refused": (StorePermissionDenied, "Vault at {store.address} refused the login: check the credentials"),
    # Vault answers 403 for a missing mount too, so that mounts cannot be discovered: name both causes.
    "denied": (StorePermissionDenied, "check the token's policies on {store.mount}/data/{store.path} and "
               "{store.mount}/metadata/{store.path}, that mount {store.mount!r} exists, and the Vault namespace"),
    "no mount": (SecretNotFound, "Vault at {store.address} has no mount {store.mount!r}: check the mount name in the "
                 "URI and the Vault namespace"),
    "missing": (SecretNotFound, "the secret does not exist at {store.address}: check the path, or create it first"),
    "unavailable": (StoreUnavailable, "Vault at {store.address} failed; retry later"),
    "invalid": (InvalidRequest, "Vault refused the request as invalid"),
}  # fmt: skip
_CREDENTIAL_VARIABLES = (
    "VAULT_NAMESPACE", "VAULT_CACERT", "VAULT_TOKEN", "VAULT_ROLE_ID", "VAULT_SECRET_ID", "VAULT_APPROLE_MOUNT",
    "VAULT_K8S_ROLE", "VAULT_K8S_TOKEN_PATH", "VAULT_K8S_MOUNT",
)  # fmt: skip


def _numbers(mapped: str) -> list[int]:
    """A ``version.<id>`` entry: the Vault version numbers holding that value, oldest first."""
    return [int(n) for n in mapped.split(",") if n.strip()]


@dataclass(frozen=True)
class _State:
    """What one metadata read says: Vault's version numbers and this store's stage keys."""

    custom: dict[str, str]
    latest: int  # Vault's current_version: the number of the last version written (0: none)
    versions: dict[int, dict[str, Any]]

    def live(self, number: int) -> bool:
        v = self.versions.get(number)
        return v is not None and not v.get("destroyed") and not v.get("deletion_time")

    def managed(self) -> bool:
        """Whether this store has pinned CURRENT; before that, Vault's latest live version is CURRENT by definition."""
        return "stage.current" in self.custom

    def numbers_of(self, version_id: str) -> list[int]:
        """Every Vault version holding the value named ``version_id`` (a value re-written as latest has several)."""
        mapped = self.custom.get(f"version.{version_id}")
        if mapped is not None:
            return _numbers(mapped)
        match = _KV_ID.fullmatch(version_id)
        return [int(match.group(1))] if match and int(match.group(1)) in self.versions else []

    def number_of(self, version_id: str) -> int | None:
        """The newest live Vault version holding ``version_id`` (the newest one at all if none is live)."""
        numbers = self.numbers_of(version_id)
        live = [n for n in numbers if self.live(n)]
        return max(live or numbers, default=None)

    def id_of(self, number: int) -> str:
        for key, value in self.custom.items():
            if key.startswith("version.") and number in _numbers(value):
                return key.removeprefix("version.")
        return f"kv-{number}"

    def at(self, stage: Stage) -> str | None:
        found = self.custom.get(_STAGE_KEYS[stage])
        if found is None and stage is Stage.CURRENT:
            live = [n for n in self.versions if self.live(n)]
            return f"kv-{max(live)}" if live else None
        return found

    def recorded_up_to(self) -> int:
        """The highest Vault version this store has recorded; later ones were written by a call that crashed."""
        ids = {v for k, v in self.custom.items() if k.startswith("stage.")}
        ids |= {k.removeprefix("version.") for k in self.custom if k.startswith("version.")}
        return max((n for i in ids for n in self.numbers_of(i)), default=0)

    def written(self, number: int, meta: dict[str, Any]) -> _State:
        """This state after a data write of ours created version ``number``."""
        return _State(self.custom, number, {**self.versions, number: meta})

    def holding(self, version_id: str, number: int) -> dict[str, str]:
        """The custom metadata with Vault version ``number`` recorded as holding ``version_id``'s value."""
        kept = [n for n in self.numbers_of(version_id) if n in self.versions and n != number]
        return {**self.custom, f"version.{version_id}": ",".join(map(str, [*kept, number][-_KEPT_COPIES:]))}

    def with_stages(self, custom: dict[str, str] | None = None, **stages: str | None) -> dict[str, str]:
        """The custom metadata with some stages moved, and the map pruned to staged and recent versions."""
        custom = dict(self.custom if custom is None else custom)
        if "current" not in stages and "stage.current" not in custom and self.at(Stage.CURRENT):
            custom["stage.current"] = self.at(Stage.CURRENT) or ""  # pin it before a newer version hides it
        for name, version_id in stages.items():
            if version_id is None:
                custom.pop(f"stage.{name}", None)
            else:
                custom[f"stage.{name}"] = version_id
        staged = {v for k, v in custom.items() if k.startswith("stage.")}
        unstaged = sorted(
            (k for k in custom if k.startswith("version.") and k.removeprefix("version.") not in staged),
            key=lambda k: max(_numbers(custom[k]), default=0),
        )
        for key in unstaged[:-_KEPT_UNSTAGED]:
            del custom[key]
        return custom


class VaultStore(SecretStore):
    """A secret in a Vault KV version 2 mount (see the module docstring for the layout)."""

    OPTIONS: ClassVar[dict[str, str]] = {"namespace": "namespace=NS"}
    ROTATION_ID = re.compile(r"(?!kv-\d+$)[A-Za-z0-9._:-]{1,100}")
    ROTATION_ID_RULE = "use 1-100 letters, digits, '.', '_', ':' or '-', not of the form kv-NUMBER"
    ERRORS = _ERRORS

    def __init__(self, uri: SecretURI) -> None:
        super().__init__(uri)
        self.mount, self.path = uri.location, uri.name.strip("/")
        self.address = os.environ.get("VAULT_ADDR", "")
        if not self.address:
            raise StorePermissionDenied(
                f"VAULT_ADDR is not set: set it to your Vault's address (https://HOST:8200) to use {uri.display}"
            )

    # --- connection -----------------------------------------------------------------------------------------------
    @cached_property
    def client(self) -> hvac.Client:
        """One logged-in client per Vault, namespace and credentials in this process (a login is a round trip)."""
        credentials = tuple(os.environ.get(name) for name in _CREDENTIAL_VARIABLES)
        return shared_client(("vault", self.address, self.uri.options.get("namespace"), credentials), self._login)

    def _login(self) -> hvac.Client:
        namespace = self.uri.options.get("namespace") or os.environ.get("VAULT_NAMESPACE") or None
        verify: str | bool = os.environ.get("VAULT_CACERT") or True
        client = hvac.Client(url=self.address, namespace=namespace, verify=verify)
        env = os.environ
        if env.get("VAULT_TOKEN"):
            client.token = env["VAULT_TOKEN"]
        elif env.get("VAULT_ROLE_ID") and env.get("VAULT_SECRET_ID"):
            self._call(
                "log in with AppRole (VAULT_ROLE_ID, VAULT_SECRET_ID)",
                lambda: client.auth.approle.login(
                    role_id=env["VAULT_ROLE_ID"],
                    secret_id=env["VAULT_SECRET_ID"],
                    mount_point=env.get("VAULT_APPROLE_MOUNT", "approle"),
                ),
            )
        elif env.get("VAULT_K8S_ROLE"):
            token_file = Path(env.get("VAULT_K8S_TOKEN_PATH", K8S_TOKEN_FILE))
            try:
                jwt = token_file.read_text().strip()
            except OSError as exc:
                raise StorePermissionDenied(
                    f"VAULT_K8S_ROLE is set but the service-account token {token_file} cannot be read "
                    f"({exc.strerror}): run inside a Pod or set VAULT_TOKEN"
                ) from None
            self._call(
                f"log in with Kubernetes auth as role {env['VAULT_K8S_ROLE']!r}",
                lambda: client.auth.kubernetes.login(
                    role=env["VAULT_K8S_ROLE"], jwt=jwt, mount_point=env.get("VAULT_K8S_MOUNT", "kubernetes")
                ),
            )
        else:
            raise StorePermissionDenied(
                f"no Vault credentials for {self.uri.display}: set VAULT_TOKEN, or VAULT_ROLE_ID and VAULT_SECRET_ID "
                "(AppRole), or VAULT_K8S_ROLE (Kubernetes auth)"
            )
        return client

    def _condition(self, exc: Exception, action: str) -> tuple[str, str] | None:
        name = type(exc).__name__
        if isinstance(exc, requests.ConnectionError | requests.Timeout):
            return "unreachable", name
        if not isinstance(exc, vault_errors.VaultError):
            return None
        if isinstance(exc, vault_errors.InvalidRequest):
            if _CAS_MISMATCH in str(exc):
                return "changed", "check-and-set failed"
            return ("login refused" if action.startswith("log in") else "invalid"), "; ".join(exc.errors or [name])
        if isinstance(exc, vault_errors.Forbidden | vault_errors.Unauthorized):
            return "denied", name
        if isinstance(exc, vault_errors.InvalidPath):
            if "no handler for route" in str(exc):
                return "no mount", name
            if not action.startswith("log in"):
                self._check_mount()
            return "missing", name
        transient = vault_errors.VaultDown | vault_errors.InternalServerError | vault_errors.BadGateway
        return ("unavailable" if isinstance(exc, transient | vault_errors.RateLimitExceeded) else "invalid"), name

    def _check_mount(self) -> None:
        """Raise a clear error when the mount does not exist or is not KV version 2 (Vault's CLI checks this too)."""
        try:
            mount = self.client.adapter.get(f"/v1/sys/internal/ui/mounts/{self.mount}")
        except vault_errors.VaultError:
            return  # 403: this token may not see the mount; the caller's own error says what failed
        data = (mount or {}).get("data") or {}
        if data.get("type") not in ("kv", "generic") or str((data.get("options") or {}).get("version")) != "2":
            raise InvalidStoreURI(
                f"mount {self.mount!r} at {self.address} is not a KV version 2 secrets engine (type "
                f"{data.get('type')!r}, options {data.get('options')!r}): the vault store needs KV v2"
            )

    # --- primitives -----------------------------------------------------------------------------------------------
    def _snapshot(self, repair: bool) -> Snapshot:
        state = self._state()
        if repair:
            state = self._settled(state)
        ids = {state.id_of(number) for number in state.versions}
        ids |= {k.removeprefix("version.") for k in state.custom if k.startswith("version.")}
        stages = StageMap(**{stage.name.lower(): state.at(stage) for stage in Stage})
        return Snapshot(stages=stages, versions=frozenset(ids), token=state)

    def _read_value(self, version_id: str, snapshot: Snapshot | None) -> str:
        state = snapshot.token if snapshot is not None else self._state()
        number = state.number_of(version_id)
        if number is None:
            raise VersionNotFound(f"{self.uri.display} has no version {version_id!r}")
        return self._number_value(number, f"version {version_id}")

    def _write_stages(self, snapshot: Snapshot, stages: StageMap, staged: Staged | None = None) -> str | None:
        """Data writes first, each checked against the version number read; then the metadata that records them."""
        state: _State = snapshot.token
        if staged is not None:
            if not state.managed():
                state = self._set_custom(state, state.with_stages(), "pin the CURRENT version")
            state = self._write(state, {"value": staged.value, "rotation_id": staged.rotation_id}, "stage a version")
            number = state.latest
            # The staged value must never be what consumers read: CURRENT's value goes on top of it again.
            state, custom = self._write_copy(state, stages.current or "", "write CURRENT back as the latest")
            custom = {
                **state.with_stages(custom, pending=staged.rotation_id),
                f"version.{staged.rotation_id}": str(number),
            }
            self._set_custom(state, custom, "record the PENDING stage")
            return staged.rotation_id
        custom = state.custom
        if state.id_of(state.latest) != stages.current:
            state, custom = self._write_copy(state, stages.current or "", "write the new CURRENT as the latest")
        moved = {stage.name.lower(): stages.at(stage) for stage in Stage}
        self._set_custom(state, state.with_stages(custom, **moved), "record the stages")
        return None

    def _delete(self, snapshot: Snapshot, version_id: str) -> None:
        """Destroy (erase for good, not soft-delete) every Vault version holding the value; the map keeps its id, so
        the id is not staged again. Never Vault's latest version: that one always holds CURRENT."""
        numbers = snapshot.token.numbers_of(version_id)
        if numbers:
            self._call(
                "destroy a version",
                lambda: self.client.secrets.kv.v2.destroy_secret_versions(
                    path=self.path, versions=numbers, mount_point=self.mount
                ),
            )

    def _delete_secret(self, snapshot: Snapshot) -> None:
        """Its metadata and every version, destroyed (Vault answers 204 for a path that holds nothing)."""
        self._call(
            "delete the secret",
            lambda: self.client.secrets.kv.v2.delete_metadata_and_all_versions(path=self.path, mount_point=self.mount),
        )

    def _describe(self, snapshot: Snapshot) -> list[tuple[str, datetime | None]]:
        """One entry per live version id, dated by its first write (later re-writes as latest hold the same value)."""
        state: _State = snapshot.token
        first: dict[str, int] = {}
        for number in sorted(n for n in state.versions if state.live(n)):
            first.setdefault(state.id_of(number), number)
        # Vault's RFC 3339 stamps carry nanoseconds: Python 3.11 reads them, keeping microseconds.
        return [(v, datetime.fromisoformat(state.versions[n]["created_time"])) for v, n in first.items()]

    def _create(self, value: str) -> str:
        try:
            state = self._write(_State({}, 0, {}), {"value": value}, "create the secret")
        except StagingConflict:
            raise SecretExists(f"secret {self.uri.display} already exists; nothing was written") from None
        version_id = f"kv-{state.latest}"
        state = self._state()
        self._set_custom(state, state.with_stages(current=version_id), "record the CURRENT stage")
        return version_id

    def _list(self) -> list[str]:
        """Secrets in the same folder of the mount as this one (Vault lists one folder level at a time)."""
        folder = self.path.rpartition("/")[0]
        try:
            keys = self._call(
                "list secrets",
                lambda: self.client.secrets.kv.v2.list_secrets(path=folder, mount_point=self.mount),
            )["data"]["keys"]
        except SecretNotFound:
            return []
        return sorted(f"{folder}/{k}" if folder else k for k in keys if not k.endswith("/"))

    # --- Vault calls ----------------------------------------------------------------------------------------------
    def _state(self) -> _State:
        meta = self._call(
            "read the metadata",
            lambda: self.client.secrets.kv.v2.read_secret_metadata(path=self.path, mount_point=self.mount),
        )["data"]
        versions = {int(n): v for n, v in (meta.get("versions") or {}).items()}
        return _State(dict(meta.get("custom_metadata") or {}), int(meta.get("current_version") or 0), versions)

    def _read_number(self, number: int, what: str) -> dict[str, Any]:
        try:
            response = self._call(
                f"read {what}",
                lambda: self.client.secrets.kv.v2.read_secret_version(
                    path=self.path, version=number, mount_point=self.mount, raise_on_deleted_version=True
                ),
            )
        except SecretNotFound:
            raise VersionNotFound(f"{what} of {self.uri.display} was deleted or destroyed") from None
        return response["data"]["data"] or {}

    def _number_value(self, number: int, what: str) -> str:
        data = self._read_number(number, what)
        if not isinstance(data.get("value"), str):
            raise InvalidRequest(
                f"{what} of {self.uri.display} has no string field 'value': this store keeps the secret as "
                '{"value": "..."}; write it in that shape'
            )
        return data["value"]

    def _write(self, state: _State, data: dict[str, str], action: str) -> _State:
        """Write ``data`` as the newest version, checked against ``state.latest``; the state with that version."""
        written = self._call(
            action,
            lambda: self.client.secrets.kv.v2.create_or_update_secret(
                path=self.path, secret=data, cas=state.latest, mount_point=self.mount
            ),
        )["data"]
        return state.written(int(written["version"]), written)

    def _write_copy(self, state: _State, version_id: str, action: str) -> tuple[_State, dict[str, str]]:
        """Re-write version ``version_id``'s value as Vault's latest; the state and the metadata recording it."""
        if state.number_of(version_id) is None:
            raise VersionNotFound(
                f"{self.uri.display} has no version {version_id or 'CURRENT'!r} to write as Vault's latest version: "
                "write a value with `vault kv put` or create the secret again"
            )
        value = self._value(version_id)  # this process's copy when it has one
        state = self._write(state, {"value": value, "copy_of": version_id}, action)
        return state, state.holding(version_id, state.latest)

    def _set_custom(self, read: _State, custom: dict[str, str], action: str) -> _State:
        """Write the custom metadata if nobody changed the secret since ``read`` (Vault has no CAS for metadata)."""
        now = self._state()
        if now.custom != read.custom or now.latest != read.latest:
            raise StagingConflict(
                f"could not {action} for {self.uri.display}: another writer changed the secret's versions or stages "
                "meanwhile; nothing was changed by this step, retry it"
            )
        self._call(
            action,
            lambda: self.client.secrets.kv.v2.update_metadata(
                path=self.path, custom_metadata=custom, mount_point=self.mount
            ),
        )
        return _State(custom, now.latest, now.versions)

    def _settled(self, state: _State) -> _State:
        """Finish what a crashed call left, so that Vault's latest version holds CURRENT.

        Versions newer than the last recorded one were written by a call that crashed before recording them: a
        staged value (``rotation_id``) becomes PENDING as its ``stage`` meant, a re-written value (``copy_of``) is
        recorded as its version. A latest version written outside this store is refused, not overwritten.
        """
        if not state.managed():
            return state
        custom, recorded = dict(state.custom), state.recorded_up_to()
        for number in sorted(n for n in state.versions if n > recorded and state.live(n)):
            data = self._read_number(number, f"version kv-{number}")
            staged, copied = data.get("rotation_id"), data.get("copy_of")
            if isinstance(copied, str) and _State(custom, state.latest, state.versions).numbers_of(copied):
                custom = _State(custom, state.latest, state.versions).holding(copied, number)
            elif isinstance(staged, str) and custom.get("stage.pending") in (None, staged):
                custom = {**custom, "stage.pending": staged, f"version.{staged}": str(number)}
            elif number == state.latest:
                raise StagingConflict(
                    f"Vault's latest version kv-{number} of {self.uri.display} was written outside this store, so "
                    f"consumers read it while this store's CURRENT is {state.at(Stage.CURRENT)!r}: delete it "
                    f"(`vault kv delete -versions={number}`) and retry, and this store writes CURRENT back as latest"
                )
        if custom != state.custom:
            state = self._set_custom(state, custom, "record the versions of an interrupted call")
        if state.id_of(state.latest) == state.at(Stage.CURRENT) and state.live(state.latest):
            return state
        written, custom = self._write_copy(state, state.at(Stage.CURRENT) or "", "write CURRENT back as the latest")
        return self._set_custom(written, custom, "record CURRENT as the latest version")
