"""Kubernetes: one Secret is one store secret; CURRENT's fields are projected onto the keys its consumers read.

Layout of ``k8s://NAMESPACE/SECRET_NAME?context=CTX&keys=MAPPING``:

- The keys consumers read (``secretKeyRef``, a mounted volume): CURRENT's fields, as ``keys=`` says.
  ``auto`` (the default): a JSON object's text, number and boolean fields each under its own name (``username``,
  ``password``, ``tls.crt``...); PEM text holding certificates and a private key as ``tls.crt`` and ``tls.key``; any
  other value as ``value``. ``FIELD:KEY,...``: those fields under those keys, ``.`` naming the whole value
  (``keys=.:secret-key``). ``none``: nothing. A Secret created with ``tls.crt`` and ``tls.key`` has the type
  ``kubernetes.io/tls``. The projection follows CURRENT only (a staged value never reaches it), a key a new value no
  longer has is removed, and a key this store did not project is never overwritten (that is refused).
- Beside them, the stages: the data keys ``current``, ``pending`` and ``previous`` hold whole values, and
  ``retired`` the version the last promotion pushed out of PREVIOUS (what a revert gives PREVIOUS back). The
  annotation ``secret-rotation.io/versions`` maps each to ``{"id": VERSION_ID, "created": ISO}``, and
  ``secret-rotation.io/projected`` lists the projected keys. A version that loses its key is gone (Kubernetes keeps
  no history); ``secret-rotation.io/forgotten`` keeps the last ids gone, which are not staged again.
- A Secret made with ``kubectl`` is adopted as version ``initial``: its ``current`` key if it has one, else all its
  keys as one JSON object (so a ``username``/``password`` Secret keeps its shape through rotations).

Every change is one ``replace`` carrying the ``resourceVersion`` read just before, so a concurrent writer makes it
fail with 409 (:class:`~stores.errors.StagingConflict`) instead of being overwritten.

Credentials: in-cluster service account when running in a Pod (and no ``?context=``), else the kubeconfig
(``KUBECONFIG`` or ``~/.kube/config``) with its current context or ``?context=CTX``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import re
import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar

import urllib3
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

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
from targets.kubernetes import NoKubernetesCredentials, kube_api_client

VERSIONS_ANNOTATION = "secret-rotation.io/versions"
PROJECTED_ANNOTATION = "secret-rotation.io/projected"
FORGOTTEN_ANNOTATION = "secret-rotation.io/forgotten"
_FORGOTTEN_KEPT = 16  # ids of dropped versions remembered, so that a rotation id is not staged twice
MANAGED_BY = {"app.kubernetes.io/managed-by": "secret-rotation"}
_ERRORS: dict[str, tuple[type[StoreError], str]] = {
    "unreachable": (StoreUnavailable, "the Kubernetes API server is unreachable: check the kubeconfig's server and "
                    "the network"),
    "denied": (StorePermissionDenied, "check the RBAC role of the credentials in use (get, create and update on "
               "secrets in namespace {store.namespace!r})"),
    "no namespace": (SecretNotFound, "namespace {store.namespace!r} does not exist: check the URI and kube context"),
    "missing": (SecretNotFound, "Secret {store.name!r} does not exist in namespace {store.namespace!r}: check the "
                "namespace, the name and the kube context, or create it first"),
    "exists": (SecretExists, "Secret {store.name!r} already exists in namespace {store.namespace!r}; nothing was "
               "written"),
    "changed": (StagingConflict, "another writer updated Secret {store.name!r} in namespace {store.namespace!r} "
                "since it was read (resourceVersion conflict); nothing was written, retry the step"),
    "unavailable": (StoreUnavailable, "the Kubernetes API failed; retry later"),
    "invalid": (InvalidRequest, "the Kubernetes API refused the request as invalid"),
}  # fmt: skip
_SLOTS = {Stage.CURRENT: "current", Stage.PENDING: "pending", Stage.PREVIOUS: "previous"}
_RESERVED = frozenset({*_SLOTS.values(), "retired"})
_DATA_KEY = re.compile(r"[-._a-zA-Z0-9]+")
_MAPPING = re.compile(r"auto|none|[^:,]+:[-._a-zA-Z0-9]+(,[^:,]+:[-._a-zA-Z0-9]+)*")
_PEM = re.compile(r"-----BEGIN ([A-Z ]+)-----\n.*?\n-----END \1-----", re.S)


def _b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _text(field: object) -> str:
    return field if isinstance(field, str) else json.dumps(field)


class KubernetesStore(SecretStore):
    """A Kubernetes Secret laid out as described in the module docstring."""

    OPTIONS: ClassVar[dict[str, str]] = {"context": "context=CTX", "keys": "keys=auto|none|FIELD:KEY,..."}
    ERRORS = _ERRORS

    def __init__(self, uri: SecretURI) -> None:
        super().__init__(uri)
        self.namespace, self.name = uri.location, uri.name
        self.mapping = self.uri.options.get("keys", "auto")
        if not _MAPPING.fullmatch(self.mapping):
            raise InvalidStoreURI(
                f"keys={self.mapping!r} in {uri.display}: use auto, none, or FIELD:KEY pairs separated by commas "
                "(keys are letters, digits, '-', '_' and '.'; the field '.' is the whole value)"
            )

    def canonical_options(self, uri: SecretURI) -> dict[str, str]:
        return {name: value for name, value in uri.options.items() if (name, value) != ("keys", "auto")}

    @property
    def api(self) -> k8s.CoreV1Api:
        context = self.uri.options.get("context")
        key = ("k8s", context, os.environ.get("KUBECONFIG"), os.environ.get("KUBERNETES_SERVICE_HOST"))
        try:
            return shared_client(key, lambda: k8s.CoreV1Api(kube_api_client(context)))
        except NoKubernetesCredentials as exc:
            raise StorePermissionDenied(str(exc)) from None

    def _condition(self, exc: Exception, action: str) -> tuple[str, str] | None:
        if isinstance(exc, urllib3.exceptions.HTTPError | OSError):
            return "unreachable", type(exc).__name__
        if not isinstance(exc, ApiException):
            return None
        try:
            reported = json.loads(exc.body or "{}")
        except ValueError:
            reported = {}
        reason = reported.get("reason", exc.reason)
        code = f"HTTP {exc.status} {reason}"
        if exc.status in (401, 403):
            return "denied", code
        if exc.status == 404:
            return ("no namespace" if (reported.get("details") or {}).get("kind") == "namespaces" else "missing"), code
        if exc.status == 409:
            return ("exists" if reason == "AlreadyExists" else "changed"), code
        return ("unavailable" if exc.status >= 500 or exc.status == 429 else "invalid"), code

    # --- primitives -----------------------------------------------------------------------------------------------
    def _get(self) -> k8s.V1Secret:
        return self._call("read", lambda: self.api.read_namespaced_secret(self.name, self.namespace))

    def _snapshot(self, repair: bool) -> Snapshot:
        secret = self._get()
        data = secret.data or {}
        annotations = secret.metadata.annotations or {}
        created = secret.metadata.creation_timestamp.isoformat() if secret.metadata.creation_timestamp else ""
        if VERSIONS_ANNOTATION in annotations:
            try:
                slots = json.loads(annotations[VERSIONS_ANNOTATION])
                projected = json.loads(annotations.get(PROJECTED_ANNOTATION, "[]"))
            except ValueError:
                raise InvalidRequest(
                    f"the annotations {VERSIONS_ANNOTATION} and {PROJECTED_ANNOTATION} of {self.uri.display} are not "
                    "JSON: fix or remove them"
                ) from None
            values = {slot["id"]: self._decoded(data[key], key) for key, slot in slots.items() if key in data}
            slots = {key: slot for key, slot in slots.items() if key in data}
        elif "current" in data:
            slots, projected = {"current": {"id": "initial", "created": created}}, []
            values = {"initial": self._decoded(data["current"], "current")}
        else:  # made by kubectl in the shape consumers read: those keys are the value, and projected already
            slots, projected = {"current": {"id": "initial", "created": created}}, sorted(data)
            values = {"initial": json.dumps({key: self._decoded(data[key], key) for key in sorted(data)})}
        stages = StageMap(**{stage.name.lower(): slots.get(key, {}).get("id") for stage, key in _SLOTS.items()})
        versions = frozenset(slot["id"] for slot in slots.values())
        forgotten = frozenset(json.loads(annotations.get(FORGOTTEN_ANNOTATION, "[]")))
        token = (secret, slots, projected)
        return Snapshot(stages=stages, versions=versions, token=token, values=values, forgotten=forgotten)

    def _read_value(self, version_id: str, snapshot: Snapshot | None) -> str:
        values = (snapshot or self._snapshot(repair=False)).values
        if version_id not in values:
            raise VersionNotFound(f"{self.uri.display} has no version {version_id!r}")
        return values[version_id]

    def _write_stages(self, snapshot: Snapshot, stages: StageMap, staged: Staged | None = None) -> str | None:
        """One replace: the stage keys, the projection of CURRENT, and the annotations that describe them."""
        _, slots, _ = snapshot.token
        values = dict(snapshot.values)
        created = {slot["id"]: slot.get("created", "") for slot in slots.values()}
        if staged is not None:
            self._projection(staged.value, self._foreign(snapshot))  # refused now, not when it is promoted
            values[staged.rotation_id], created[staged.rotation_id] = staged.value, _now()
            stages = stages.but(pending=staged.rotation_id)
        kept = {stages.current, stages.pending, stages.previous}
        before = (snapshot.stages.previous, slots.get("retired", {}).get("id"))
        retired = next((v for v in before if v is not None and v not in kept), None)
        held = {**{key: stages.at(stage) for stage, key in _SLOTS.items()}, "retired": retired}
        new_slots = {key: {"id": v, "created": created[v]} for key, v in held.items() if v is not None}
        data = {key: _b64(values[slot["id"]]) for key, slot in new_slots.items()}
        self._replace(snapshot, data, values[stages.current or ""], new_slots, "change the stages")
        return staged.rotation_id if staged else None

    def _delete(self, snapshot: Snapshot, version_id: str) -> None:
        """Only the retired version survives its stages; the others went with the replace that dropped them."""
        secret, slots, _ = snapshot.token
        if slots.get("retired", {}).get("id") == version_id:
            kept = {key: slot for key, slot in slots.items() if key != "retired"}
            data = {key: secret.data[key] for key in kept}
            self._replace(snapshot, data, snapshot.values[slots["current"]["id"]], kept, "destroy a retired version")

    def _delete_secret(self, snapshot: Snapshot) -> None:
        """The whole Secret object, keys that are not this store's included."""
        with contextlib.suppress(SecretNotFound):
            self._call("delete", lambda: self.api.delete_namespaced_secret(self.name, self.namespace))

    def _describe(self, snapshot: Snapshot) -> list[tuple[str, datetime | None]]:
        unique = {slot["id"]: slot.get("created") for slot in snapshot.token[1].values()}  # PENDING on CURRENT: 1
        ordered = sorted(unique.items(), key=lambda version: version[1] or "")
        return [(v, datetime.fromisoformat(created) if created else None) for v, created in ordered]

    def _create(self, value: str) -> str:
        version_id = uuid.uuid4().hex
        projection = self._projection(value)
        slots = {"current": {"id": version_id, "created": _now()}}
        body = k8s.V1Secret(
            metadata=k8s.V1ObjectMeta(
                name=self.name,
                labels=MANAGED_BY,
                annotations={
                    VERSIONS_ANNOTATION: json.dumps(slots),
                    PROJECTED_ANNOTATION: json.dumps(sorted(projection)),
                },
            ),
            type="kubernetes.io/tls" if {"tls.crt", "tls.key"} <= projection.keys() else "Opaque",
            data={"current": _b64(value), **{key: _b64(field) for key, field in projection.items()}},
        )
        self._call("create", lambda: self.api.create_namespaced_secret(self.namespace, body))
        return version_id

    def _list(self) -> list[str]:
        """Names of every Secret in the namespace."""
        found = self._call("list secrets", lambda: self.api.list_namespaced_secret(self.namespace))
        return sorted(item.metadata.name for item in found.items)

    # --- the Secret's keys ----------------------------------------------------------------------------------------
    def _replace(
        self, snapshot: Snapshot, stage_data: dict[str, str], current: str, slots: dict[str, Any], action: str
    ) -> None:
        """Write the stage keys and CURRENT's projection; other keys (not this store's) are kept as they are."""
        secret, old_slots, _ = snapshot.token
        foreign = self._foreign(snapshot)
        projection = self._projection(current, foreign)
        kept = {slot["id"] for slot in slots.values()}
        gone = [slot["id"] for slot in old_slots.values() if slot["id"] not in kept]
        forgotten = json.loads((secret.metadata.annotations or {}).get(FORGOTTEN_ANNOTATION, "[]"))  # oldest first
        secret.data = {**foreign, **{key: _b64(field) for key, field in projection.items()}, **stage_data}
        secret.metadata.annotations = {
            **(secret.metadata.annotations or {}),
            VERSIONS_ANNOTATION: json.dumps(slots),
            PROJECTED_ANNOTATION: json.dumps(sorted(projection)),
            FORGOTTEN_ANNOTATION: json.dumps([*forgotten, *dict.fromkeys(gone)][-_FORGOTTEN_KEPT:]),
        }
        # metadata.resourceVersion is still the one read: the API server refuses the write if anyone wrote since.
        self._call(action, lambda: self.api.replace_namespaced_secret(self.name, self.namespace, secret))

    @staticmethod
    def _foreign(snapshot: Snapshot) -> dict[str, str]:
        """The Secret's keys that are neither stages nor projected by this store: someone else's."""
        secret, _, projected = snapshot.token
        return {k: v for k, v in (secret.data or {}).items() if k not in _RESERVED and k not in projected}

    def _projection(self, value: str, foreign: dict[str, str] | None = None) -> dict[str, str]:
        """The data keys consumers read for the value ``value``, as the ``keys`` option says."""
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = None
        if self.mapping == "none":
            projection: dict[str, str] = {}
        elif self.mapping == "auto" and isinstance(parsed, dict):
            projection = {
                key: _text(field)
                for key, field in parsed.items()
                if isinstance(field, str | int | float | bool) and _DATA_KEY.fullmatch(key)
            }
        elif self.mapping == "auto":
            blocks = {m.group(0): m.group(1) for m in _PEM.finditer(value)}
            certificates = [pem for pem, kind in blocks.items() if kind == "CERTIFICATE"]
            keys = [pem for pem, kind in blocks.items() if kind.endswith("PRIVATE KEY")]
            if certificates and len(keys) == 1:
                projection = {"tls.crt": "\n".join(certificates) + "\n", "tls.key": keys[0] + "\n"}
            else:
                projection = {"value": value}
        else:
            projection = {}
            for pair in self.mapping.split(","):
                name, _, key = pair.partition(":")
                if name != "." and not (isinstance(parsed, dict) and name in parsed):
                    raise InvalidRequest(
                        f"the value for {self.uri.display} has no field {name!r}, which keys= puts under data key "
                        f"{key!r}: give the value that field, or change keys=; nothing was changed"
                    )
                projection[key] = value if name == "." else _text(parsed[name])
        clash = sorted(projection.keys() & (_RESERVED | set(foreign or {})))
        if clash:
            raise InvalidRequest(
                f"the value for {self.uri.display} would be projected onto data key(s) {', '.join(clash)}, which hold "
                "this store's stages or keys it did not write: rename the field(s) with keys=FIELD:KEY; nothing was "
                "changed"
            )
        return projection

    def _decoded(self, data: str, key: str) -> str:
        try:
            return base64.b64decode(data).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise InvalidRequest(
                f"data key {key!r} of {self.uri.display} is not UTF-8 text: this store keeps text values"
            ) from None
