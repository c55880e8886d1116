"""A protocol double of Google Secret Manager's REST API v1 (what the Python client sends with ``transport="rest"``).

It answers secrets create/get/patch/list, ``:addVersion``, versions get/list/``:access``/``:disable``/``:destroy``
(by number, ``latest`` or a version alias) as the documented API does: JSON bodies, int64 as strings, base64 payloads,
etags that change on every change of a resource (a stale etag on patch is 400 FAILED_PRECONDITION), 409
ALREADY_EXISTS, 404 NOT_FOUND and 400 FAILED_PRECONDITION for a disabled or destroyed version. Callers are told
apart by their bearer token: none (anonymous, as from ``AnonymousCredentials``) or one from :meth:`issue_token` may
do everything, a ``reader`` token only reads (403 PERMISSION_DENIED otherwise), any other token is 401.
"""

from __future__ import annotations

import base64
import re
import secrets
from datetime import UTC, datetime
from typing import Any

from tests.doubles import HttpDouble

_SECRET = re.compile(r"/v1/projects/([^/:]+)/secrets/([^/:]+)(?::(addVersion))?")
_VERSION = re.compile(r"/v1/projects/([^/:]+)/secrets/([^/:]+)/versions/([^/:]+)(?::(access|disable|destroy|enable))?")
_ALIAS = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_SECRET_ID = re.compile(r"[A-Za-z0-9_-]{1,255}")
_WRITES = frozenset({"POST", "PATCH", "DELETE"})
_STATES = {"ENABLED": 1, "DISABLED": 2, "DESTROYED": 3}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _int_enums(payload: dict[str, Any]) -> dict[str, Any]:
    """What the API answers to ``$alt=json;enum-encoding=int`` (the Python client asks for it): states as numbers."""
    if "versions" in payload:
        return {**payload, "versions": [_int_enums(v) for v in payload["versions"]]}
    return {**payload, "state": _STATES[payload["state"]]} if "state" in payload else payload


def _error(code: int, status: str, message: str) -> tuple[int, Any]:
    return code, {"error": {"code": code, "message": message, "status": status}}


class GcpSecretManagerDouble(HttpDouble):
    """In-memory Secret Manager for any project id."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens: dict[str, str] = {}  # bearer token -> "owner" or "reader"
        self.secrets: dict[tuple[str, str], dict[str, Any]] = {}
        self.versions: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.payloads: dict[str, bytes] = {}  # version name -> data

    def issue_token(self, role: str) -> str:
        token = f"double-{role}-" + secrets.token_hex(8)
        self.tokens[token] = role
        return token

    def malformed_body(self) -> Any:
        return _error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")[1]

    # --- HTTP -----------------------------------------------------------------------------------------------------
    def route(self, method: str, path: str, query: dict[str, str], body: Any, headers: Any) -> tuple[int, Any]:
        auth = headers.get("Authorization") or ""
        role = "owner" if not auth else self.tokens.get(auth.removeprefix("Bearer "))
        if role is None:
            return _error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")
        if role == "reader" and method in _WRITES:
            return _error(403, "PERMISSION_DENIED", "Permission 'secretmanager.secrets.update' denied on resource.")
        body = body or {}
        status, payload = self._answer(method, path, query, body)
        if "enum-encoding=int" in query.get("$alt", "") and isinstance(payload, dict):
            payload = _int_enums(payload)
        return status, payload

    def _answer(self, method: str, path: str, query: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        if match := _VERSION.fullmatch(path):
            project, secret_id, version, verb = match.groups()
            return self._version(method, project, secret_id, version, verb, body)
        if match := _SECRET.fullmatch(path):
            project, secret_id, verb = match.groups()
            if verb == "addVersion" and method == "POST":
                return self._add_version(project, secret_id, body)
            if method == "GET" and verb is None:
                return self._get(project, secret_id)
            if method == "PATCH" and verb is None:
                return self._patch(project, secret_id, query, body)
            if method == "DELETE" and verb is None:
                return self._delete(project, secret_id)
        if (match := re.fullmatch(r"/v1/projects/([^/:]+)/secrets", path)) is not None:
            if method == "POST":
                return self._create(match.group(1), query.get("secretId", ""), body)
            if method == "GET":
                return self._list(match.group(1))
        if (match := re.fullmatch(r"/v1/projects/([^/:]+)/secrets/([^/:]+)/versions", path)) and method == "GET":
            return self._list_versions(*match.groups())
        return _error(404, "NOT_FOUND", f"The requested URL {path} was not found on this server.")

    # --- secrets --------------------------------------------------------------------------------------------------
    def _missing(self, project: str, secret_id: str) -> tuple[int, Any]:
        return _error(
            404, "NOT_FOUND", f"Secret [projects/{project}/secrets/{secret_id}] not found or has no versions."
        )

    def _public(self, secret: dict[str, Any]) -> dict[str, Any]:
        aliases = {k: str(v) for k, v in secret["versionAliases"].items()}
        return {**secret, "versionAliases": aliases}

    def _create(self, project: str, secret_id: str, body: dict[str, Any]) -> tuple[int, Any]:
        if not _SECRET_ID.fullmatch(secret_id):
            return _error(400, "INVALID_ARGUMENT", "Secret id must match [a-zA-Z0-9_-]{1,255}.")
        if (project, secret_id) in self.secrets:
            return _error(409, "ALREADY_EXISTS", f"Secret [projects/{project}/secrets/{secret_id}] already exists.")
        if "replication" not in body:
            return _error(400, "INVALID_ARGUMENT", "Secret.replication is required.")
        secret = {
            "name": f"projects/{project}/secrets/{secret_id}",
            "replication": body["replication"],
            "createTime": _now(),
            "labels": dict(body.get("labels") or {}),
            "annotations": dict(body.get("annotations") or {}),
            "versionAliases": {},
            "etag": self._etag(),
        }
        self.secrets[(project, secret_id)] = secret
        self.versions[(project, secret_id)] = []
        return 200, self._public(secret)

    def _get(self, project: str, secret_id: str) -> tuple[int, Any]:
        secret = self.secrets.get((project, secret_id))
        return (200, self._public(secret)) if secret else self._missing(project, secret_id)

    def _delete(self, project: str, secret_id: str) -> tuple[int, Any]:
        if self.secrets.pop((project, secret_id), None) is None:
            return self._missing(project, secret_id)
        for version in self.versions.pop((project, secret_id)):
            self.payloads.pop(version["name"], None)
        return 200, {}

    def _patch(self, project: str, secret_id: str, query: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        secret = self.secrets.get((project, secret_id))
        if secret is None:
            return self._missing(project, secret_id)
        if body.get("etag") and body["etag"] != secret["etag"]:
            return _error(
                400, "FAILED_PRECONDITION", "The etag provided in the request does not match the current etag."
            )
        fields = [f for f in query.get("updateMask", "").split(",") if f]
        if not fields or set(fields) - {"labels", "annotations", "versionAliases"}:
            return _error(400, "INVALID_ARGUMENT", "update_mask must name labels, annotations or versionAliases.")
        if "versionAliases" in fields:
            aliases = {k: int(v) for k, v in (body.get("versionAliases") or {}).items()}
            numbers = {int(v["name"].rpartition("/")[2]) for v in self.versions[(project, secret_id)]}
            for alias, number in aliases.items():
                if not _ALIAS.fullmatch(alias) or alias == "latest":
                    return _error(400, "INVALID_ARGUMENT", f"Invalid version alias {alias!r}.")
                if number not in numbers:
                    return _error(
                        400, "INVALID_ARGUMENT", f"Version alias {alias!r} names a version that does not exist."
                    )
            secret["versionAliases"] = aliases
        for field in {"labels", "annotations"} & set(fields):
            secret[field] = dict(body.get(field) or {})
        secret["etag"] = self._etag()
        return 200, self._public(secret)

    def _list(self, project: str) -> tuple[int, Any]:
        found = [self._public(s) for (p, _), s in sorted(self.secrets.items()) if p == project]
        return 200, {"secrets": found, "totalSize": len(found)}

    # --- versions -------------------------------------------------------------------------------------------------
    def _add_version(self, project: str, secret_id: str, body: dict[str, Any]) -> tuple[int, Any]:
        versions = self.versions.get((project, secret_id))
        if versions is None:
            return self._missing(project, secret_id)
        data = base64.b64decode((body.get("payload") or {}).get("data") or "")
        number = len(versions) + 1
        version = {
            "name": f"projects/{project}/secrets/{secret_id}/versions/{number}",
            "createTime": _now(),
            "state": "ENABLED",
            "etag": self._etag(),
            "replicationStatus": {"automatic": {}},
        }
        versions.append(version)
        self.payloads[version["name"]] = data
        return 200, version

    def _find(self, project: str, secret_id: str, version_id: str) -> dict[str, Any] | tuple[int, Any]:
        secret, versions = self.secrets.get((project, secret_id)), self.versions.get((project, secret_id), [])
        if secret is None:
            return self._missing(project, secret_id)
        if version_id == "latest":
            live = [v for v in versions if v["state"] == "ENABLED"]
            number = int(live[-1]["name"].rpartition("/")[2]) if live else 0
        elif version_id.isdigit():
            number = int(version_id)
        elif version_id in secret["versionAliases"]:
            number = secret["versionAliases"][version_id]
        else:
            number = 0
        if not 1 <= number <= len(versions):
            name = f"projects/{project}/secrets/{secret_id}/versions/{version_id}"
            return _error(404, "NOT_FOUND", f"Secret Version [{name}] not found.")
        return versions[number - 1]

    def _version(
        self, method: str, project: str, secret_id: str, version_id: str, verb: str | None, body: dict[str, Any]
    ) -> tuple[int, Any]:
        found = self._find(project, secret_id, version_id)
        if isinstance(found, tuple):
            return found
        version = found
        if method == "GET" and verb is None:
            return 200, version
        if method == "GET" and verb == "access":
            if version["state"] != "ENABLED":
                return _error(
                    400, "FAILED_PRECONDITION", f"Secret Version [{version['name']}] is in {version['state']} state."
                )
            data = self.payloads[version["name"]]
            return 200, {"name": version["name"], "payload": {"data": base64.b64encode(data).decode()}}
        if method == "POST" and verb in ("disable", "enable", "destroy"):
            if body.get("etag") and body["etag"] != version["etag"]:
                return _error(
                    400, "FAILED_PRECONDITION", "The etag provided in the request does not match the current etag."
                )
            if version["state"] == "DESTROYED":
                return _error(400, "FAILED_PRECONDITION", f"Secret Version [{version['name']}] is in DESTROYED state.")
            if verb == "destroy":
                version.update(state="DESTROYED", destroyTime=_now())
                self.payloads[version["name"]] = b""
            else:
                version["state"] = "ENABLED" if verb == "enable" else "DISABLED"
            version["etag"] = self._etag()
            return 200, version
        return _error(404, "NOT_FOUND", f"The requested URL for {version['name']} was not found on this server.")

    def _list_versions(self, project: str, secret_id: str) -> tuple[int, Any]:
        if (project, secret_id) not in self.secrets:
            return self._missing(project, secret_id)
        newest_first = list(reversed(self.versions[(project, secret_id)]))
        return 200, {"versions": newest_first, "totalSize": len(newest_first)}

    def _etag(self) -> str:
        return f'"{secrets.token_hex(7)}"'
