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
A discarded value's Key Vault versions stay, disabled, so its id is not staged again.

Options: ``url=https://HOST[:PORT]`` for another vault URL (sovereign clouds, a private endpoint, a test double),
``ca_file=PATH`` for a private CA (TLS is always verified), ``verify_challenge_resource=false`` when the vault URL is
not under the resource Key Vault's challenge names (a custom domain or a test double; allowed only with ``url=``).
Credentials: ``DefaultAzureCredential`` (environment, workload or managed identity, Azure CLI ...).
"""

from __future__ import annotations

import contextlib
import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import ClassVar

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

_VERSION_TAG = "rotation-version"
_STAGE_TAGS = {
    Stage.CURRENT: "rotation-current",
    Stage.PENDING: "rotation-pending",
    Stage.PREVIOUS: "rotation-previous",
}
_ERRORS: dict[str, tuple[type[StoreError], str]] = {
    "challenge": (StorePermissionDenied, "{store.vault_url} answered with a challenge for another resource than the "
                  "vault URL, so no token was sent: check url=; for a vault behind a custom domain add "
                  "verify_challenge_resource=false"),
    "ResourceNotFoundError": (SecretNotFound, "the secret does not exist in {store.vault_url}: check the vault and "
                              "secret names, or create it first"),
    "ClientAuthenticationError": (StorePermissionDenied, "DefaultAzureCredential found no valid identity (sign in "
                                  "with `az login`, or set AZURE_TENANT_ID/AZURE_CLIENT_ID with a secret, "
                                  "certificate or workload identity, or run with a managed identity)"),
    "ResourceExistsError": (StagingConflict, "Key Vault answered with a conflict (the secret may be deleted but "
                            "recoverable: recover or purge it first)"),
    "disabled": (VersionNotFound, "the version is disabled (discarded): it cannot be read"),
    "denied": (StorePermissionDenied, "give the identity the 'Key Vault Secrets Officer' role on the vault (or an "
               "access policy with get, list and set on secrets), and check the vault's firewall"),
    "unavailable": (StoreUnavailable, "Key Vault at {store.vault_url} could not be reached or failed: check the "
                    "vault URL, the network and the vault's firewall, then retry"),
    "invalid": (InvalidRequest, "Key Vault refused the request as invalid"),
}  # fmt: skip


def _store_id(properties: SecretProperties) -> str:
    return (properties.tags or {}).get(_VERSION_TAG) or str(properties.version)


@dataclass(frozen=True)
class _State:
    """The latest version (value and map) and the Key Vault versions, by store version id."""

    latest: KeyVaultSecret = field(repr=False)  # its value is CURRENT's
    versions: dict[str, list[SecretProperties]]  # store id -> its enabled Key Vault versions, newest first
    known: frozenset[str]  # every store id, disabled (discarded) ones included

    @property
    def latest_id(self) -> str:
        return _store_id(self.latest.properties)

    def stages(self) -> StageMap:
        tags = self.latest.properties.tags or {}
        held = {stage.name.lower(): tags.get(tag) or None for stage, tag in _STAGE_TAGS.items()}
        return StageMap(**{**held, "current": held["current"] or self.latest_id})


def _tags(stages: StageMap, version_id: str) -> dict[str, str]:
    held = {_STAGE_TAGS[stage]: stages.at(stage) for stage in Stage}
    return {**{tag: v for tag, v in held.items() if v}, _VERSION_TAG: version_id}


class AzureStore(SecretStore):
    """One secret in Azure Key Vault (see the module docstring for the layout)."""

    OPTIONS: ClassVar[dict[str, str]] = {
        "url": "url=https://VAULT.vault.azure.net",
        "ca_file": "ca_file=/path/ca.pem",
        "verify_challenge_resource": "verify_challenge_resource=false (with url=)",
    }
    ERRORS = _ERRORS
    ROTATION_ID = re.compile(r"(?![0-9a-f]{32}$)[A-Za-z0-9._:-]{1,100}")
    ROTATION_ID_RULE = (
        "use 1-100 letters, digits, '.', '_', ':' or '-', not 32 hexadecimal digits (the form of Key Vault's own "
        "version ids)"
    )

    def __init__(self, uri: SecretURI, credential: TokenCredential | None = None) -> None:
        super().__init__(uri)
        self.vault_url = self._url_option("url", tls_only=True) or f"https://{uri.location}.vault.azure.net"
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
        ca_file = self.uri.options.get("ca_file")
        return shared_client(
            ("azure", self.vault_url, ca_file, self._verify_resource, self._credential),
            lambda: SecretClient(
                self.vault_url,
                self._credential or DefaultAzureCredential(),
                verify_challenge_resource=self._verify_resource,
                connection_verify=ca_file or True,
                retry_total=2,
            ),
        )

    def _condition(self, exc: Exception, action: str) -> tuple[str, str] | None:
        name = type(exc).__name__
        if isinstance(exc, ValueError) and "challenge" in str(exc):
            return "challenge", "authentication challenge for another resource"
        if not isinstance(exc, AzureError):
            return None
        status = getattr(exc, "status_code", None) or 0
        if isinstance(exc, ResourceNotFoundError | ClientAuthenticationError | ResourceExistsError):
            return name, f"HTTP {status}"
        if isinstance(exc, HttpResponseError) and status == 403:
            return ("disabled" if _inner_code(exc) == "SecretDisabled" else "denied"), f"HTTP 403 {_inner_code(exc)}"
        if isinstance(exc, ServiceRequestError | ServiceResponseError) or status in (429, 500, 502, 503, 504):
            return "unavailable", name
        return "invalid", f"HTTP {status} {name}"

    # --- primitives -----------------------------------------------------------------------------------------------
    def _snapshot(self, repair: bool) -> Snapshot:
        state = self._state()
        stages = state.stages()
        if repair and state.latest_id != stages.current:  # a stage that stopped before its pin
            self._settle(state, stages, "pin the CURRENT value as the latest version")
            state = self._state()
        values = {state.latest_id: state.latest.value} if state.latest.value is not None else {}
        return Snapshot(stages=stages, versions=state.known, token=state, values=values)

    def _read_value(self, version_id: str, snapshot: Snapshot | None) -> str:
        state: _State = snapshot.token if snapshot is not None else self._state()
        if version_id == state.latest_id and state.latest.value is not None:
            return state.latest.value
        holders = state.versions.get(version_id)
        if not holders:
            raise VersionNotFound(f"version {version_id} of {self.uri.display} does not exist or is disabled")
        keyvault_id = str(holders[0].version)
        secret = self._call(f"read version {version_id}", lambda: self.client.get_secret(self.secret_name, keyvault_id))
        return secret.value or ""

    def _write_stages(self, snapshot: Snapshot, stages: StageMap, staged: Staged | None = None) -> str | None:
        state: _State = snapshot.token
        self._guard(state, "change the stages")
        if staged is None:
            self._settle(state, stages, "change the stages")
            return None
        stages = stages.but(pending=staged.rotation_id)
        current = stages.current or ""
        current_value = self._value(current, snapshot)
        # The map names CURRENT explicitly: the staged version, briefly the latest, must not become CURRENT.
        self._write(staged.value, _tags(stages, staged.rotation_id), "stage a new version")
        self._write(current_value, _tags(stages, current), "pin the CURRENT value as the latest version")
        return staged.rotation_id

    def _delete(self, snapshot: Snapshot, version_id: str) -> None:
        """Disable every Key Vault version holding the value: Key Vault cannot delete one version."""
        for properties in snapshot.token.versions.get(version_id, []):
            keyvault_id = str(properties.version)
            self._call(
                "disable a discarded version",
                lambda keyvault_id=keyvault_id: self.client.update_secret_properties(
                    self.secret_name, keyvault_id, enabled=False
                ),
            )

    def _delete_secret(self, snapshot: Snapshot) -> None:
        """Delete, then purge: a soft-deleted secret would keep its name taken (and its values) for 90 days."""
        with contextlib.suppress(SecretNotFound):
            poller = self._call("delete the secret", lambda: self.client.begin_delete_secret(self.secret_name))
            self._call("wait for the deletion", poller.wait)
        with contextlib.suppress(SecretNotFound):  # a vault without soft delete has nothing to purge
            self._call("purge the deleted secret", lambda: self.client.purge_deleted_secret(self.secret_name))

    def _describe(self, snapshot: Snapshot) -> list[tuple[str, datetime | None]]:
        found = [
            (version, min((p.created_on for p in holders if p.created_on), default=None))
            for version, holders in snapshot.token.versions.items()
        ]
        return sorted(found, key=lambda v: (v[1] is None, v[1], v[0]))

    def _create(self, value: str) -> str:
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

    def _list(self) -> list[str]:
        listed = self._call("list the secrets", lambda: list(self.client.list_properties_of_secrets()))
        return sorted(str(p.name) for p in listed)

    # --- Key Vault calls ------------------------------------------------------------------------------------------
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
        return _State(latest, dict(versions), frozenset(_store_id(p) for p in listed))

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

    def _settle(self, state: _State, stages: StageMap, action: str) -> None:
        """Record ``stages`` so that the latest version holds the CURRENT value and carries the map."""
        current = stages.current or ""
        tags = _tags(stages, current)
        if state.latest_id != current:
            value = self._value(current, Snapshot(stages=stages, versions=state.known, token=state))
            self._write(value, tags, action)
        elif (state.latest.properties.tags or {}) != tags:
            version = str(state.latest.properties.version)
            self._call(action, lambda: self.client.update_secret_properties(self.secret_name, version, tags=tags))


def _inner_code(exc: HttpResponseError) -> str:
    """Key Vault's ``innererror.code`` (``SecretDisabled``, ``ForbiddenByRbac``...) of an error answer."""
    try:
        return str(exc.response.json()["error"]["innererror"]["code"]) if exc.response is not None else ""
    except (ValueError, KeyError, TypeError):
        return ""
