"""Azure Key Vault: one Key Vault secret; the stages live in the tags of its versions.

``azure://VAULT_NAME/SECRET_NAME`` names a secret in ``https://VAULT_NAME.vault.azure.net``. Key Vault has versions
and tags but no stages, and applications read the LATEST version (``get_secret(name)``, App Service and AKS
references without a version). So this store keeps one rule: **the latest version always holds the CURRENT value**,
and applications keep reading the latest version, unchanged.

Layout:

- A store version id names a value, not a Key Vault version: the rotation id for a staged value, the Key Vault
  version id for the value written by :meth:`AzureStore.create` (or by other tools). A Key Vault version carries its
  store id in the tag ``rotation-version`` (none: its own Key Vault id).
- Every version this store writes also carries the whole stage map in the tags ``rotation-current``,
  ``rotation-pending`` and ``rotation-previous`` (store version ids). The map of the latest version is the state.
  A latest version without a map (written by other tools) is CURRENT by itself.
- ``stage`` writes the new value (tagged with its rotation id and the new map), then writes the CURRENT value again
  as the newest version (a "pin"), so the latest version is CURRENT again. ``promote`` and ``revert`` write the value
  that becomes CURRENT as the newest version. A change of the map alone is a tag update of the latest version. So a
  value can sit in several Key Vault versions with the same ``rotation-version`` tag; they are one store version.
- ``discard`` first pins (so the latest is never the discarded value), then disables (``enabled=False``) every Key
  Vault version of the discarded value. Key Vault cannot delete one version.

Why pin rather than ask consumers to read the CURRENT version id: every Key Vault consumer already reads the latest
version, and a staged value must not reach them before promotion. The price: between the two writes of ``stage``
(one round trip) the latest version is the PENDING value, and a rotation adds three Key Vault versions. A crash in
that window leaves the map consistent (the staged version carries it); the next call of this store on the secret
pins again.

Key Vault has no conditional writes: before writing, this store re-reads the latest version and raises
:class:`~stores.errors.StagingConflict` if another writer added one since the state was read (a check, not a lock).

Options: ``url=https://HOST[:PORT]`` for another vault URL (sovereign clouds, a private endpoint, a test double),
``ca_file=PATH`` for a private CA (TLS is always verified), ``verify_challenge_resource=false`` when the vault URL is
not under the resource Key Vault's challenge names (a custom domain or a test double; allowed only with ``url=``).
Credentials: ``DefaultAzureCredential`` (environment, workload or managed identity, Azure CLI ...).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar, TypeVar
from urllib.parse import urlsplit

from azure.core.credentials import TokenCredential
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.identity import DefaultAzureCredential
from azure.keyvault.secrets import KeyVaultSecret, SecretClient, SecretProperties

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

_VERSION_TAG = "rotation-version"
_STAGE_TAGS = {
    Stage.CURRENT: "rotation-current",
    Stage.PENDING: "rotation-pending",
    Stage.PREVIOUS: "rotation-previous",
}
_ROTATION_ID = re.compile(r"[A-Za-z0-9._:-]{1,100}")
_KEYVAULT_ID = re.compile(r"[0-9a-f]{32}")
_T = TypeVar("_T")


def _check_rotation_id(rotation_id: str) -> None:
    if not _ROTATION_ID.fullmatch(rotation_id) or _KEYVAULT_ID.fullmatch(rotation_id):
        raise ValueError(
            f"rotation id {rotation_id!r} cannot name a Key Vault value: use 1-100 letters, digits, '.', '_', ':' or "
            "'-', not 32 hexadecimal digits (the form of Key Vault's own version ids)"
        )


def _store_id(properties: SecretProperties) -> str:
    return (properties.tags or {}).get(_VERSION_TAG) or str(properties.version)


@dataclass(frozen=True)
class _State:
    """The latest version (value and map) and every enabled Key Vault version, by store version id."""

    latest: KeyVaultSecret
    versions: dict[str, list[SecretProperties]]  # store id -> its enabled Key Vault versions, newest first

    @property
    def latest_id(self) -> str:
        return _store_id(self.latest.properties)

    def stages(self) -> dict[Stage, str | None]:
        tags = self.latest.properties.tags or {}
        held: dict[Stage, str | None] = {stage: tags.get(tag) or None for stage, tag in _STAGE_TAGS.items()}
        held[Stage.CURRENT] = held[Stage.CURRENT] or self.latest_id
        return held


class AzureStore(SecretStore):
    """One secret in Azure Key Vault (see the module docstring for the layout)."""

    OPTIONS: ClassVar[dict[str, str]] = {
        "url": "url=https://VAULT.vault.azure.net",
        "ca_file": "ca_file=/path/ca.pem",
        "verify_challenge_resource": "verify_challenge_resource=false (with url=)",
    }

    def __init__(self, uri: SecretURI, credential: TokenCredential | None = None) -> None:
        super().__init__(uri)
        self.vault_url = uri.options.get("url") or f"https://{uri.location}.vault.azure.net"
        parts = urlsplit(self.vault_url)
        if parts.scheme != "https" or not parts.hostname or parts.path.strip("/"):
            raise InvalidStoreURI(
                f"vault url {self.vault_url!r} for {uri.display} must be https://HOST[:PORT]: Key Vault is reached "
                "over TLS only"
            )
        verify_resource = uri.options.get("verify_challenge_resource", "true").lower()
        if verify_resource not in ("true", "false") or (verify_resource == "false" and "url" not in uri.options):
            raise InvalidStoreURI(
                f"verify_challenge_resource={verify_resource!r} in {uri.display}: use false only together with url= "
                "(a vault behind a custom domain); the standard vault URL always passes the check"
            )
        self.secret_name = uri.name
        self._verify_resource = verify_resource == "true"
        self._credential = credential

    @cached_property
    def client(self) -> SecretClient:
        return SecretClient(
            self.vault_url,
            self._credential or DefaultAzureCredential(),
            verify_challenge_resource=self._verify_resource,
            connection_verify=self.uri.options.get("ca_file") or True,
            retry_total=2,
        )

    # --- errors ---------------------------------------------------------------------------------------------------
    def _call(self, action: str, fn: Callable[[], _T], missing: Callable[[], StoreError] | None = None) -> _T:
        """Run one Key Vault call and turn its failures into store errors that name the secret, never a value."""
        try:
            return fn()
        except (AzureError, ValueError) as exc:
            if isinstance(exc, ValueError) and "challenge" not in str(exc):
                raise
            error = self._translate(action, exc, missing)
        # Raised outside the except block so that the SDK's exception is not chained onto ours.
        raise error

    def _translate(self, action: str, exc: Exception, missing: Callable[[], StoreError] | None) -> StoreError:
        where = f"secret {self.secret_name!r} in {self.vault_url} ({self.uri.display})"
        if isinstance(exc, ValueError):
            return StorePermissionDenied(
                f"{self.vault_url} answered with an authentication challenge for another resource than the vault "
                f"URL, so no token was sent for {self.uri.display}: check url=; for a vault behind a custom domain "
                "add verify_challenge_resource=false"
            )
        if isinstance(exc, ResourceNotFoundError):
            return missing() if missing else self._no_secret()
        if isinstance(exc, ClientAuthenticationError):
            return StorePermissionDenied(
                f"could not authenticate to {action} for {where}: DefaultAzureCredential found no valid identity "
                "(sign in with `az login`, or set AZURE_TENANT_ID/AZURE_CLIENT_ID with a secret, certificate or "
                "workload identity, or run with a managed identity)"
            )
        if isinstance(exc, ResourceExistsError):
            return StagingConflict(
                f"Key Vault refused to {action} for {where} with a conflict (the secret may be deleted but "
                "recoverable: recover or purge it first)"
            )
        if isinstance(exc, HttpResponseError) and exc.status_code == 403:
            if _inner_code(exc) == "SecretDisabled" and missing is not None:
                return missing()
            return StorePermissionDenied(
                f"Key Vault denied permission to {action} for {where}: give the identity the 'Key Vault Secrets "
                "Officer' role on the vault (or an access policy with get, list and set on secrets), and check the "
                "vault's firewall"
            )
        if isinstance(exc, ServiceRequestError | ServiceResponseError) or (
            isinstance(exc, HttpResponseError) and (exc.status_code or 0) in (429, 500, 502, 503, 504)
        ):
            return StoreUnavailable(
                f"Key Vault at {self.vault_url} could not {action} for {self.uri.display} ({type(exc).__name__}): "
                "check the vault URL, the network and the vault's firewall, then retry"
            )
        status = getattr(exc, "status_code", None)
        return StoreError(f"Key Vault failed to {action} for {where}: HTTP {status} {type(exc).__name__}")

    def _no_secret(self) -> SecretNotFound:
        return SecretNotFound(
            f"secret {self.secret_name!r} does not exist in {self.vault_url} ({self.uri.display}): check the vault "
            "and secret names, or create it first"
        )

    # --- reads ----------------------------------------------------------------------------------------------------
    def _latest(self) -> KeyVaultSecret:
        return self._call("read the latest version", lambda: self.client.get_secret(self.secret_name))

    def _state(self) -> _State:
        latest = self._latest()
        listed = self._call(
            "list the versions", lambda: list(self.client.list_properties_of_secret_versions(self.secret_name))
        )
        versions: dict[str, list[SecretProperties]] = defaultdict(list)
        for properties in sorted(listed, key=lambda p: p.created_on or 0, reverse=True):
            if properties.enabled:
                versions[_store_id(properties)].append(properties)
        return _State(latest, dict(versions))

    def _value(self, state: _State, version_id: str, what: str) -> str:
        if version_id == state.latest_id and state.latest.value is not None:
            return state.latest.value
        holders = state.versions.get(version_id)
        if not holders:
            raise VersionNotFound(f"{what} of {self.uri.display} does not exist or is disabled")
        keyvault_id = str(holders[0].version)
        secret = self._call(
            f"read {what}",
            lambda: self.client.get_secret(self.secret_name, keyvault_id),
            lambda: VersionNotFound(f"{what} of {self.uri.display} does not exist or is disabled"),
        )
        return secret.value or ""

    def read(self, stage: Stage = Stage.CURRENT) -> str:
        stage = Stage(stage)
        state = self._state()
        version_id = state.stages()[stage]
        if version_id is None:
            raise VersionNotFound(f"no version of {self.uri.display} is {stage.value}")
        return self._value(state, version_id, f"the {stage.value} version {version_id}")

    def read_version(self, version_id: str) -> str:
        return self._value(self._state(), version_id, f"version {version_id}")

    def describe(self) -> SecretDescription:
        state = self._state()
        held = state.stages()
        infos = [
            VersionInfo(
                version_id=version_id,
                stages=tuple(stage for stage in Stage if held[stage] == version_id),
                created_at=min((p.created_on for p in holders if p.created_on), default=None),
            )
            for version_id, holders in state.versions.items()
        ]
        infos.sort(key=lambda v: (v.created_at is None, v.created_at, v.version_id))
        return SecretDescription(uri=self.uri.display, versions=tuple(infos))

    def list(self) -> list[str]:
        listed = self._call("list the secrets", lambda: list(self.client.list_properties_of_secrets()))
        return sorted(str(p.name) for p in listed)

    # --- writes ---------------------------------------------------------------------------------------------------
    def _guard(self, state: _State, action: str) -> None:
        """Refuse to write if another writer added a version since ``state`` was read (Key Vault has no etags)."""
        now = self._latest()
        if now.properties.version != state.latest.properties.version or now.properties.tags != (
            state.latest.properties.tags
        ):
            raise StagingConflict(
                f"could not {action} for {self.uri.display}: another writer changed the secret since it was read; "
                "nothing was changed by this step, retry it"
            )

    def _write(self, value: str, tags: dict[str, str], action: str) -> KeyVaultSecret:
        return self._call(action, lambda: self.client.set_secret(self.secret_name, value, tags=tags))

    def _settle(self, state: _State, stages: dict[Stage, str | None], action: str) -> None:
        """Record ``stages`` so that the latest version holds the CURRENT value and carries the map."""
        current = stages[Stage.CURRENT]
        assert current is not None
        tags = {_STAGE_TAGS[stage]: held for stage, held in stages.items() if held}
        if state.latest_id == current:
            if (state.latest.properties.tags or {}) == {**tags, _VERSION_TAG: current}:
                return
            version = str(state.latest.properties.version)
            self._call(
                action,
                lambda: self.client.update_secret_properties(
                    self.secret_name, version, tags={**tags, _VERSION_TAG: current}
                ),
            )
            return
        self._write(self._value(state, current, f"version {current}"), {**tags, _VERSION_TAG: current}, action)

    def create(self, value: str) -> str:
        try:
            self._latest()
        except SecretNotFound:
            pass
        else:
            raise SecretExists(f"secret {self.uri.display} already exists; nothing was written")
        try:
            written = self._write(value, {}, "create the secret")
        except StagingConflict as exc:
            raise SecretExists(str(exc)) from None
        return str(written.properties.version)

    def stage(self, value: str, rotation_id: str) -> str:
        _check_rotation_id(rotation_id)
        state = self._state()
        stages = state.stages()
        if rotation_id in state.versions:
            if state.latest_id != stages[Stage.CURRENT]:  # an earlier stage stopped before its pin
                self._settle(state, stages, "pin the CURRENT value as the latest version")
            return rotation_id
        if stages[Stage.PENDING] is not None:
            raise StagingConflict(
                f"{self.uri.display} already has a PENDING version staged by rotation {stages[Stage.PENDING]!r}: "
                f"finish or roll back that rotation before staging {rotation_id!r}"
            )
        current = stages[Stage.CURRENT]
        assert current is not None
        current_value = self._value(state, current, f"the CURRENT version {current}")
        # The map names CURRENT explicitly: the staged version, briefly the latest, must not become CURRENT.
        tags = {_STAGE_TAGS[stage]: held for stage, held in {**stages, Stage.PENDING: rotation_id}.items() if held}
        self._guard(state, "stage a new version")
        self._write(value, {**tags, _VERSION_TAG: rotation_id}, "stage a new version")
        self._write(current_value, {**tags, _VERSION_TAG: current}, "pin the CURRENT value as the latest version")
        return rotation_id

    def promote(self, rotation_id: str) -> None:
        state = self._state()
        if rotation_id not in state.versions:
            raise VersionNotFound(f"{self.uri.display} has no version staged by rotation {rotation_id!r}")
        stages = state.stages()
        current, pending = stages[Stage.CURRENT], stages[Stage.PENDING]
        if pending not in (None, rotation_id):
            raise StagingConflict(
                f"{self.uri.display}: PENDING belongs to rotation {pending!r}, not {rotation_id!r}; nothing changed"
            )
        if current != rotation_id:
            stages = {Stage.CURRENT: rotation_id, Stage.PREVIOUS: current, Stage.PENDING: None}
        else:
            stages[Stage.PENDING] = None
        self._guard(state, "promote the PENDING version")
        self._settle(state, stages, "promote the PENDING version")

    def revert(self, rotation_id: str, previous_version: str | None) -> None:
        """Undo a promotion; a rotation that was only staged loses its PENDING stage (its value stays enabled)."""
        state = self._state()
        stages = state.stages()
        if stages[Stage.PENDING] == rotation_id:
            stages[Stage.PENDING] = None
        elif stages[Stage.CURRENT] == rotation_id:
            restored = stages[Stage.PREVIOUS]
            if restored is None or restored not in state.versions:
                raise VersionNotFound(
                    f"cannot revert rotation {rotation_id!r} of {self.uri.display}: no PREVIOUS version to make CURRENT"
                )
            keep = previous_version if previous_version in state.versions else None
            stages = {Stage.CURRENT: restored, Stage.PREVIOUS: keep, Stage.PENDING: None}
        else:
            return
        self._guard(state, "revert the rotation")
        self._settle(state, stages, "revert the rotation")

    def discard(self, rotation_id: str) -> None:
        """Unstage the value and disable every Key Vault version holding it; a CURRENT value is left alone."""
        state = self._state()
        stages = state.stages()
        if rotation_id not in state.versions or stages[Stage.CURRENT] == rotation_id:
            return
        kept = {stage: (None if held == rotation_id else held) for stage, held in stages.items()}
        self._guard(state, "discard the staged version")
        self._settle(state, kept, "discard the staged version")
        for properties in state.versions[rotation_id]:
            self._disable(str(properties.version))

    def _disable(self, keyvault_id: str) -> None:
        self._call(
            "disable a discarded version",
            lambda: self.client.update_secret_properties(self.secret_name, keyvault_id, enabled=False),
            lambda: VersionNotFound(f"a version of {self.uri.display} vanished while it was being disabled"),
        )


def _inner_code(exc: HttpResponseError) -> str:
    """Key Vault's ``innererror.code`` (``SecretDisabled``, ``ForbiddenByRbac``...) of an error answer."""
    try:
        return str(exc.response.json()["error"]["innererror"]["code"]) if exc.response is not None else ""
    except (ValueError, KeyError, TypeError):
        return ""
