"""A protocol double of the Kubernetes API server: core/v1 Secrets and apps/v1 Deployments and StatefulSets.

It answers the calls the kubernetes Python client makes as the API server documents them: bearer-token auth (401),
RBAC-like refusals for a read-only token (403), ``Status`` objects for NotFound, AlreadyExists and Conflict (a PUT
whose ``metadata.resourceVersion`` is not the stored one gets 409), ``generation`` bumped by a spec change, and
strategic-merge / merge patches. A simulated controller finishes a rollout ``rollout_delay`` seconds after the spec
changes, except for a workload whose pod template uses an image from ``registry.invalid``: that one never becomes
ready and, for a Deployment, reports ``ProgressDeadlineExceeded`` after ``spec.progressDeadlineSeconds``.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import json
import re
import secrets
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from tests.doubles import HttpDouble

STUCK_IMAGE_REGISTRY = "registry.invalid/"
_SECRET_PATH = re.compile(r"/api/v1/namespaces/([^/]+)/secrets(?:/([^/]+))?")
_APPS_PATH = re.compile(r"/apis/apps/v1/namespaces/([^/]+)/(deployments|statefulsets)(?:/([^/]+))?")
_KINDS = {"secrets": "Secret", "deployments": "Deployment", "statefulsets": "StatefulSet"}
_MERGE_PATCHES = ("application/strategic-merge-patch+json", "application/merge-patch+json")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def status(code: int, reason: str, message: str, name: str = "", kind: str = "", group: str = "") -> dict[str, Any]:
    """A ``Status`` object, the body of every API server error."""
    details = {"name": name, "kind": kind, **({"group": group} if group else {})} if kind else None
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message}
    return {**body, "reason": reason, **({"details": details} if details else {}), "code": code}


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    """JSON merge patch (RFC 7386); for the map fields patched here a strategic merge patch does the same."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


class KubernetesDouble(HttpDouble):
    """In-memory API server; ``admin_token`` may do everything, tokens from ``issue_token("reader")`` only read."""

    def __init__(self, namespaces: tuple[str, ...] = ("default",), rollout_delay: float = 0.3) -> None:
        super().__init__()
        self.namespaces = set(namespaces)
        self.rollout_delay = rollout_delay
        self.admin_token = "double-admin-" + secrets.token_hex(8)
        self.tokens: dict[str, str] = {self.admin_token: "admin"}
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}  # (resource, namespace, name) -> object
        self._rollout_started: dict[tuple[str, str, str], float] = {}
        self._revision = 0
        self._stop = threading.Event()
        self._controller: threading.Thread | None = None

    def issue_token(self, role: str) -> str:
        token = f"double-{role}-" + secrets.token_hex(8)
        self.tokens[token] = role
        return token

    def start(self) -> KubernetesDouble:
        super().start()
        self._stop.clear()
        self._controller = threading.Thread(target=self._control, name="KubernetesDouble-controller", daemon=True)
        self._controller.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._controller is not None:
            self._controller.join(timeout=5)
        super().stop()

    def malformed_body(self) -> Any:
        return status(400, "BadRequest", "the body of the request was in an unknown format")

    # --- HTTP -----------------------------------------------------------------------------------------------------
    def route(self, method: str, path: str, query: dict[str, str], body: Any, headers: Any) -> tuple[int, Any]:
        auth = headers.get("Authorization", "")
        role = self.tokens.get(auth.removeprefix("Bearer ")) if auth.startswith("Bearer ") else None
        if role is None:
            return 401, status(401, "Unauthorized", "Unauthorized")
        match = _SECRET_PATH.fullmatch(path)
        if match:
            resource, (namespace, name) = "secrets", match.groups()
        elif match := _APPS_PATH.fullmatch(path):
            namespace, resource, name = match.groups()
        else:
            return 404, status(404, "NotFound", "the server could not find the requested resource")
        if role != "admin" and method != "GET":
            verb = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(method, method)
            group = "" if resource == "secrets" else "apps"
            message = (
                f'{resource} "{name or ""}" is forbidden: User "system:serviceaccount:default:reader" cannot '
                f'{verb} resource "{resource}" in API group "{group}" in the namespace "{namespace}"'
            )
            return 403, status(403, "Forbidden", message, name or "", resource, group)
        key = (resource, namespace, name or "")
        if method == "GET":
            return self._get(key) if name else self._list(resource, namespace)
        if method == "POST" and not name:
            return self._create(resource, namespace, body or {})
        if method == "PUT" and name:
            return self._replace(key, body or {})
        if method == "PATCH" and name:
            return self._patch(key, body, headers.get("Content-Type", ""))
        if method == "DELETE" and name:
            return self._delete(key)
        return 405, status(405, "MethodNotAllowed", f"the server does not allow this method on {path}")

    def _not_found(self, key: tuple[str, str, str]) -> tuple[int, Any]:
        resource, _, name = key
        group = "" if resource == "secrets" else "apps"
        prefix = f"{resource}.apps" if group else resource
        return 404, status(404, "NotFound", f'{prefix} "{name}" not found', name, resource, group)

    def _get(self, key: tuple[str, str, str]) -> tuple[int, Any]:
        found = self.objects.get(key)
        return (200, copy.deepcopy(found)) if found else self._not_found(key)

    def _list(self, resource: str, namespace: str) -> tuple[int, Any]:
        items = [
            copy.deepcopy(o) for (r, ns, _), o in sorted(self.objects.items()) if r == resource and ns == namespace
        ]
        api_version = "v1" if resource == "secrets" else "apps/v1"
        meta = {"resourceVersion": str(self._revision)}
        return 200, {"kind": f"{_KINDS[resource]}List", "apiVersion": api_version, "metadata": meta, "items": items}

    def _bump(self) -> str:
        self._revision += 1
        return str(self._revision)

    def _invalid_secret(self, body: dict[str, Any]) -> str | None:
        for key, value in (body.get("data") or {}).items():
            if not re.fullmatch(r"[-._a-zA-Z0-9]+", key):
                return f"data[{key}]: Invalid value: a valid config key must consist of alphanumeric characters"
            try:
                base64.b64decode(value, validate=True)
            except (binascii.Error, TypeError):
                return f"data[{key}]: Invalid value: illegal base64 data"
        return None

    def _create(self, resource: str, namespace: str, body: dict[str, Any]) -> tuple[int, Any]:
        name = (body.get("metadata") or {}).get("name", "")
        if namespace not in self.namespaces:
            return 404, status(404, "NotFound", f'namespaces "{namespace}" not found', namespace, "namespaces")
        key = (resource, namespace, name)
        if key in self.objects:
            group = "" if resource == "secrets" else "apps"
            prefix = f"{resource}.apps" if group else resource
            return 409, status(409, "AlreadyExists", f'{prefix} "{name}" already exists', name, resource, group)
        problem = self._invalid_secret(body) if resource == "secrets" else None
        if problem or not name:
            message = f'{_KINDS[resource]} "{name}" is invalid: {problem or "metadata.name: Required value"}'
            return 422, status(422, "Invalid", message, name, resource)
        obj = copy.deepcopy(body)
        obj["apiVersion"] = "v1" if resource == "secrets" else "apps/v1"
        obj["kind"] = _KINDS[resource]
        meta = obj.setdefault("metadata", {})
        meta.update(namespace=namespace, uid=str(uuid.uuid4()), creationTimestamp=_now(), resourceVersion=self._bump())
        if resource != "secrets":
            self._default_workload(resource, obj.setdefault("spec", {}))
            meta["generation"] = 1
            # StatefulSetStatus.replicas is a required field: the API server reports 0 before the controller runs.
            obj["status"] = {"replicas": 0, "availableReplicas": 0} if resource == "statefulsets" else {}
            self._rollout_started[key] = time.monotonic()
        self.objects[key] = obj
        return 201, copy.deepcopy(obj)

    @staticmethod
    def _default_workload(resource: str, spec: dict[str, Any]) -> None:
        """The API server's defaulting of the fields that rollouts depend on."""
        spec.setdefault("replicas", 1)
        if resource == "deployments":
            spec.setdefault("progressDeadlineSeconds", 600)
            spec.setdefault(
                "strategy", {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}
            )
        else:
            spec.setdefault("updateStrategy", {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}})

    def _replace(self, key: tuple[str, str, str], body: dict[str, Any]) -> tuple[int, Any]:
        stored = self.objects.get(key)
        if stored is None:
            return self._not_found(key)
        resource, _, name = key
        sent = (body.get("metadata") or {}).get("resourceVersion")
        if sent and sent != stored["metadata"]["resourceVersion"]:
            message = (
                f'Operation cannot be fulfilled on {resource} "{name}": the object has been modified; '
                "please apply your changes to the latest version and try again"
            )
            return 409, status(409, "Conflict", message, name, resource)
        problem = self._invalid_secret(body) if resource == "secrets" else None
        if problem:
            return 422, status(422, "Invalid", f'{_KINDS[resource]} "{name}" is invalid: {problem}', name, resource)
        obj = copy.deepcopy(body)
        obj["metadata"] = {
            **obj.get("metadata", {}),
            **{k: stored["metadata"][k] for k in ("uid", "creationTimestamp")},
        }
        obj["metadata"].update(namespace=key[1], name=name, resourceVersion=self._bump())
        obj["apiVersion"], obj["kind"] = stored["apiVersion"], stored["kind"]
        self.objects[key] = obj
        return 200, copy.deepcopy(obj)

    def _patch(self, key: tuple[str, str, str], body: Any, content_type: str) -> tuple[int, Any]:
        if content_type.split(";")[0].strip() not in _MERGE_PATCHES:
            return 415, status(
                415, "UnsupportedMediaType", f"the body of the request was in an unknown format ({content_type})"
            )
        if not isinstance(body, dict):
            return 400, status(400, "BadRequest", "the body of the request was in an unknown format")
        stored = self.objects.get(key)
        if stored is None:
            return self._not_found(key)
        spec_before = json.dumps(stored.get("spec"), sort_keys=True)
        _merge(stored, {k: v for k, v in body.items() if k not in ("status", "apiVersion", "kind")})
        stored["metadata"]["resourceVersion"] = self._bump()
        if key[0] != "secrets" and json.dumps(stored.get("spec"), sort_keys=True) != spec_before:
            stored["metadata"]["generation"] += 1
            self._rollout_started[key] = time.monotonic()
        return 200, copy.deepcopy(stored)

    def _delete(self, key: tuple[str, str, str]) -> tuple[int, Any]:
        if self.objects.pop(key, None) is None:
            return self._not_found(key)
        self._rollout_started.pop(key, None)
        return 200, {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": {"name": key[2]},
        }

    # --- the simulated controllers --------------------------------------------------------------------------------
    def _control(self) -> None:
        while not self._stop.wait(0.05):
            with self.lock:
                for key, started in list(self._rollout_started.items()):
                    if time.monotonic() - started >= self.rollout_delay:
                        self._reconcile(key, started)

    def _reconcile(self, key: tuple[str, str, str], started: float) -> None:
        obj = self.objects[key]
        spec, meta = obj.get("spec") or {}, obj["metadata"]
        replicas = int(spec.get("replicas", 1))
        template = (spec.get("template") or {}).get("spec") or {}
        stuck = any(c.get("image", "").startswith(STUCK_IMAGE_REGISTRY) for c in template.get("containers") or [])
        revision = (
            f"{meta['name']}-"
            + hashlib.sha256(json.dumps(spec.get("template"), sort_keys=True).encode()).hexdigest()[:10]
        )
        before = json.dumps(obj.get("status"), sort_keys=True)
        if key[0] == "deployments":
            obj["status"] = self._deployment_status(obj, replicas, stuck, time.monotonic() - started)
        else:
            obj["status"] = self._statefulset_status(obj, replicas, stuck, revision)
        if not stuck:
            del self._rollout_started[key]
        if json.dumps(obj["status"], sort_keys=True) != before:
            meta["resourceVersion"] = self._bump()

    def _deployment_status(self, obj: dict[str, Any], replicas: int, stuck: bool, elapsed: float) -> dict[str, Any]:
        generation = obj["metadata"]["generation"]
        if not stuck:
            progressing = {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}
            available = {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"}
            counts = dict.fromkeys(("replicas", "updatedReplicas", "readyReplicas", "availableReplicas"), replicas)
            return {"observedGeneration": generation, **counts, "conditions": [available, progressing]}
        deadline = float(obj["spec"].get("progressDeadlineSeconds", 600))
        if elapsed >= deadline:
            progressing = {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}
        else:
            progressing = {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated"}
        return {
            "observedGeneration": generation,
            "replicas": replicas + 1,
            "updatedReplicas": 1,
            "readyReplicas": max(replicas - 1, 0),
            "availableReplicas": max(replicas - 1, 0),
            "unavailableReplicas": 1,
            "conditions": [progressing],
        }

    def _statefulset_status(self, obj: dict[str, Any], replicas: int, stuck: bool, revision: str) -> dict[str, Any]:
        previous = obj.get("status") or {}
        current = previous.get("currentRevision") or revision
        done = not stuck
        return {
            "observedGeneration": obj["metadata"]["generation"],
            "replicas": replicas,
            "readyReplicas": replicas if done else max(replicas - 1, 0),
            "currentReplicas": replicas if done else max(replicas - 1, 0),
            "updatedReplicas": replicas if done else 0,
            "currentRevision": revision if done else current,
            "updateRevision": revision,
        }
