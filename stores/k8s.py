"""Kubernetes: one Secret is one store secret, its stages are data keys a Pod can mount directly.

Layout of ``k8s://NAMESPACE/SECRET_NAME?context=CTX``:

- data key ``current`` holds the CURRENT value, ``pending`` the PENDING one, ``previous`` the PREVIOUS one, and
  ``retired`` the version the last promotion pushed out of PREVIOUS (kept so that promotion can be reverted);
  a Pod mounts ``current`` (``secretKeyRef.key: current``);
- the annotation ``secret-rotation.io/versions`` maps each of those keys to ``{"id": VERSION_ID, "created": ISO}``;
  a staged version's id is its rotation id. A version that loses every slot is gone (Kubernetes keeps no history).
- A Secret with a ``current`` key but no annotation (made by ``kubectl``) is adopted: its version id is ``initial``.

Every update is a ``replace`` that carries the ``resourceVersion`` read just before, so a concurrent writer makes
it fail with 409 (:class:`~stores.errors.StagingConflict`) instead of being overwritten.

Credentials: in-cluster service account when running in a Pod (and no ``?context=``), else the kubeconfig
(``KUBECONFIG`` or ``~/.kube/config``) with its current context or ``?context=CTX``.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import ClassVar, TypeVar

import urllib3
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from stores.base import SecretDescription, SecretStore, Stage, VersionInfo
from stores.errors import (
    SecretExists,
    SecretNotFound,
    StagingConflict,
    StoreError,
    StorePermissionDenied,
    StoreUnavailable,
    VersionNotFound,
)
from stores.uri import SecretURI
from targets.kubernetes import NoKubernetesCredentials, kube_api_client

VERSIONS_ANNOTATION = "secret-rotation.io/versions"
MANAGED_BY = {"app.kubernetes.io/managed-by": "secret-rotation"}
_SLOTS = {Stage.CURRENT: "current", Stage.PENDING: "pending", Stage.PREVIOUS: "previous"}
_T = TypeVar("_T")
Slots = dict[str, dict[str, str]]  # data key -> {"id": version id, "created": ISO time}


def _b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class KubernetesStore(SecretStore):
    """A Kubernetes Secret laid out as described in the module docstring."""

    OPTIONS: ClassVar[dict[str, str]] = {"context": "context=CTX"}

    def __init__(self, uri: SecretURI) -> None:
        super().__init__(uri)
        self.namespace, self.name = uri.location, uri.name
        self._api: k8s.CoreV1Api | None = None

    @property
    def api(self) -> k8s.CoreV1Api:
        if self._api is None:
            try:
                self._api = k8s.CoreV1Api(kube_api_client(self.uri.options.get("context")))
            except NoKubernetesCredentials as exc:
                raise StorePermissionDenied(str(exc)) from None
        return self._api

    def _call(self, action: str, fn: Callable[[], _T]) -> _T:
        """Run one API call; failures become store errors naming the Secret (the SDK's are not chained on)."""
        try:
            return fn()
        except ApiException as exc:
            error = self._translate(action, exc)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            error = StoreUnavailable(
                f"the Kubernetes API server is unreachable ({type(exc).__name__}) to {action} for {self.uri.display}:"
                " check the kubeconfig's server and the network"
            )
        raise error

    def _translate(self, action: str, exc: ApiException) -> StoreError:
        try:
            reported = json.loads(exc.body or "{}")
        except ValueError:
            reported = {}
        reason, message = reported.get("reason", exc.reason), reported.get("message", "")
        where = f"Secret {self.name!r} in namespace {self.namespace!r} ({self.uri.display})"
        if exc.status in (401, 403):
            return StorePermissionDenied(
                f"the Kubernetes API refused to {action} for {where}: {message or exc.reason}; check the RBAC "
                "role of the credentials in use (get, create and update on secrets)"
            )
        if exc.status == 404:
            kind = (reported.get("details") or {}).get("kind")
            if kind == "namespaces":
                return SecretNotFound(f"namespace {self.namespace!r} does not exist (store {self.uri.display})")
            return SecretNotFound(
                f"{where} does not exist: check the namespace, the name and the kube context, or create it first"
            )
        if exc.status == 409 and reason == "AlreadyExists":
            return SecretExists(f"{where} already exists; nothing was written")
        if exc.status == 409:
            return StagingConflict(
                f"could not {action} for {where}: another writer updated the Secret since it was read "
                "(resourceVersion conflict); nothing was written, retry the step"
            )
        if exc.status >= 500 or exc.status == 429:
            return StoreUnavailable(f"the Kubernetes API failed to {action} for {where}: HTTP {exc.status} {reason}")
        return StoreError(f"the Kubernetes API refused to {action} for {where}: HTTP {exc.status} {message or reason}")

    # --- reads ----------------------------------------------------------------------------------------------------
    def _get(self) -> tuple[k8s.V1Secret, Slots]:
        secret = self._call("read", lambda: self.api.read_namespaced_secret(self.name, self.namespace))
        annotations = secret.metadata.annotations or {}
        if VERSIONS_ANNOTATION in annotations:
            try:
                slots = json.loads(annotations[VERSIONS_ANNOTATION])
            except ValueError:
                raise StoreError(
                    f"the annotation {VERSIONS_ANNOTATION} of {self.uri.display} is not JSON: fix or remove it"
                ) from None
        else:
            created = secret.metadata.creation_timestamp
            slots = {"current": {"id": "initial", "created": created.isoformat() if created else ""}}
        present = secret.data or {}
        return secret, {key: slot for key, slot in slots.items() if key in present}

    def _value(self, secret: k8s.V1Secret, key: str) -> str:
        return base64.b64decode(secret.data[key]).decode()

    def read(self, stage: Stage = Stage.CURRENT) -> str:
        secret, slots = self._get()
        if _SLOTS[stage] not in slots:
            raise VersionNotFound(f"no version of {self.uri.display} is {stage.value}")
        return self._value(secret, _SLOTS[stage])

    def read_version(self, version_id: str) -> str:
        secret, slots = self._get()
        for key, slot in slots.items():
            if slot["id"] == version_id:
                return self._value(secret, key)
        raise VersionNotFound(f"{self.uri.display} has no version {version_id!r}")

    def describe(self) -> SecretDescription:
        _, slots = self._get()
        stage_of = {key: stage for stage, key in _SLOTS.items()}
        versions = [
            VersionInfo(
                version_id=slot["id"],
                stages=(stage_of[key],) if key in stage_of else (),
                created_at=datetime.fromisoformat(slot["created"]) if slot.get("created") else None,
            )
            for key, slot in sorted(slots.items(), key=lambda item: item[1].get("created", ""))
        ]
        return SecretDescription(uri=self.uri.display, versions=tuple(versions))

    def list(self) -> list[str]:
        """Names of every Secret in the namespace."""
        found = self._call("list secrets", lambda: self.api.list_namespaced_secret(self.namespace))
        return sorted(item.metadata.name for item in found.items)

    # --- writes ---------------------------------------------------------------------------------------------------
    def _replace(self, secret: k8s.V1Secret, slots: Slots, values: dict[str, str | None], action: str) -> None:
        """Write new slot contents; ``values`` maps data keys to base64 data (None removes the key)."""
        data = dict(secret.data or {})
        for key, value in values.items():
            if value is None:
                data.pop(key, None)
            else:
                data[key] = value
        kept = {key: slot for key, slot in slots.items() if key in data}
        secret.data = data
        secret.metadata.annotations = {**(secret.metadata.annotations or {}), VERSIONS_ANNOTATION: json.dumps(kept)}
        # metadata.resourceVersion is still the one read: the API server refuses the write if anyone wrote since.
        self._call(action, lambda: self.api.replace_namespaced_secret(self.name, self.namespace, secret))

    def create(self, value: str) -> str:
        version_id = uuid.uuid4().hex
        body = k8s.V1Secret(
            metadata=k8s.V1ObjectMeta(
                name=self.name,
                labels=MANAGED_BY,
                annotations={VERSIONS_ANNOTATION: json.dumps({"current": {"id": version_id, "created": _now()}})},
            ),
            type="Opaque",
            data={"current": _b64(value)},
        )
        self._call("create", lambda: self.api.create_namespaced_secret(self.namespace, body))
        return version_id

    def stage(self, value: str, rotation_id: str) -> str:
        if not rotation_id or len(rotation_id) > 200:
            raise ValueError(f"rotation id {rotation_id!r} must be 1 to 200 characters")
        secret, slots = self._get()
        if any(slot["id"] == rotation_id for slot in slots.values()):
            return rotation_id
        if "pending" in slots:
            raise StagingConflict(
                f"{self.uri.display} already has a PENDING version staged by rotation {slots['pending']['id']!r}: "
                f"finish or roll back that rotation before staging {rotation_id!r}"
            )
        slots["pending"] = {"id": rotation_id, "created": _now()}
        self._replace(secret, slots, {"pending": _b64(value)}, "stage a new version")
        return rotation_id

    def promote(self, rotation_id: str) -> None:
        secret, slots = self._get()
        if slots.get("current", {}).get("id") == rotation_id:
            if slots.get("pending", {}).get("id") == rotation_id:
                self._replace(secret, slots, {"pending": None}, "drop the PENDING stage")
            return
        if slots.get("pending", {}).get("id") != rotation_id:
            raise VersionNotFound(f"{self.uri.display} has no version staged by rotation {rotation_id!r}")
        data = secret.data
        moved = {"retired": data.get("previous"), "previous": data.get("current"), "current": data["pending"]}
        slots = {
            key: slot
            for key, slot in {
                "retired": slots.get("previous"),
                "previous": slots.get("current"),
                "current": slots["pending"],
            }.items()
            if slot
        }
        self._replace(secret, slots, {**moved, "pending": None}, "promote the PENDING version")

    def revert(self, rotation_id: str, previous_version: str | None) -> None:
        """Undo a promotion (the reverted value is dropped); a rotation only staged loses its PENDING value."""
        secret, slots = self._get()
        if slots.get("pending", {}).get("id") == rotation_id:
            self._replace(secret, slots, {"pending": None}, "drop the PENDING stage")
            return
        if slots.get("current", {}).get("id") != rotation_id:
            return
        if "previous" not in slots:
            raise VersionNotFound(
                f"cannot revert rotation {rotation_id!r} of {self.uri.display}: no PREVIOUS version to make CURRENT"
            )
        data = secret.data
        restore_retired = previous_version is not None and slots.get("retired", {}).get("id") == previous_version
        values = {
            "current": data["previous"],
            "previous": data["retired"] if restore_retired else None,
            "retired": None,
        }
        new_slots = {"current": slots["previous"], **({"previous": slots["retired"]} if restore_retired else {})}
        if "pending" in slots:
            new_slots["pending"] = slots["pending"]
        self._replace(secret, new_slots, values, "revert the promotion")

    def discard(self, rotation_id: str) -> None:
        """Delete the PENDING value of ``rotation_id`` from the Secret; anything else is left alone."""
        secret, slots = self._get()
        if slots.get("pending", {}).get("id") == rotation_id:
            self._replace(secret, slots, {"pending": None}, "discard the PENDING version")
