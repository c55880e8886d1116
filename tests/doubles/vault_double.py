"""A protocol double of HashiCorp Vault's HTTP API: KV version 2, token/AppRole/Kubernetes login, mount preflight.

It answers the calls hvac makes as Vault's documented API does (paths, status codes, JSON bodies, the
``check-and-set parameter did not match the current version`` error, custom-metadata limits). Tokens carry one of
two policies: ``root`` (everything) or ``read`` (GET and LIST on KV paths only); anything else is 403.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

from tests.doubles import HttpDouble

_DENIED = {"errors": ["1 error occurred:\n\t* permission denied\n\n"]}
_CAS_ERROR = "check-and-set parameter did not match the current version"
_DEFAULT_MAX_VERSIONS = 10


def _now() -> str:
    """Vault's timestamps: RFC 3339 with nanoseconds."""
    stamp = datetime.now(UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond:06d}123Z"


class VaultDouble(HttpDouble):
    """In-memory Vault with KV v2 mounts; ``root_token`` may do everything."""

    def __init__(self, mounts: tuple[str, ...] = ("secret",)) -> None:
        super().__init__()
        self.root_token = "double-root-" + secrets.token_hex(8)
        self.tokens: dict[str, str] = {self.root_token: "root"}
        self.mounts: dict[str, dict[str, Any]] = {m: {"type": "kv", "options": {"version": "2"}} for m in mounts}
        self.kv: dict[tuple[str, str], dict[str, Any]] = {}
        self.approles: dict[str, tuple[str, str]] = {}  # role_id -> (secret_id, policy)
        self.k8s_roles: dict[str, tuple[str, str]] = {}  # role -> (service-account jwt, policy)

    # --- set-up helpers for tests ---------------------------------------------------------------------------------
    def issue_token(self, policy: str) -> str:
        token = f"double-{policy}-" + secrets.token_hex(8)
        self.tokens[token] = policy
        return token

    def add_approle(self, policy: str = "root") -> tuple[str, str]:
        role_id, secret_id = "role-" + secrets.token_hex(6), "sid-" + secrets.token_hex(12)
        self.approles[role_id] = (secret_id, policy)
        return role_id, secret_id

    def add_kubernetes_role(self, role: str, jwt: str, policy: str = "root") -> None:
        self.k8s_roles[role] = (jwt, policy)

    # --- HTTP -----------------------------------------------------------------------------------------------------
    def route(self, method: str, path: str, query: dict[str, str], body: Any, headers: Any) -> tuple[int, Any]:
        if not path.startswith("/v1/"):
            return 404, {"errors": []}
        path = path[len("/v1/") :].strip("/")
        if method == "GET" and query.get("list") == "true":
            method = "LIST"
        if path == "auth/approle/login" and method in ("POST", "PUT"):
            return self._approle_login(body or {})
        if path == "auth/kubernetes/login" and method in ("POST", "PUT"):
            return self._kubernetes_login(body or {})
        policy = self.tokens.get(headers.get("X-Vault-Token", ""))
        if policy is None:
            return 403, _DENIED
        if path.startswith("sys/internal/ui/mounts/"):
            return self._preflight(path.removeprefix("sys/internal/ui/mounts/"))
        mount, _, rest = path.partition("/")
        op, _, key = rest.partition("/")
        if mount not in self.mounts or op not in ("data", "metadata", "delete", "destroy", "undelete"):
            return 404, {"errors": [f'no handler for route "{path}". route entry not found.']}
        if policy != "root" and method not in ("GET", "LIST"):
            return 403, _DENIED
        handler = getattr(self, f"_{op}_{method.lower()}", None)
        if handler is None:
            return 405, {"errors": [f"unsupported operation {method} on {op}"]}
        return handler(mount, key, query, body or {})

    def _login(self, policy: str) -> tuple[int, Any]:
        token = self.issue_token(policy)
        auth = {"client_token": token, "policies": [policy], "lease_duration": 3600, "renewable": True}
        return 200, {"auth": auth, "data": None, "warnings": None}

    def _approle_login(self, body: dict[str, Any]) -> tuple[int, Any]:
        known = self.approles.get(body.get("role_id", ""))
        if known is None:
            return 400, {"errors": ["invalid role ID"]}
        if known[0] != body.get("secret_id"):
            return 400, {"errors": ["invalid secret id"]}
        return self._login(known[1])

    def _kubernetes_login(self, body: dict[str, Any]) -> tuple[int, Any]:
        known = self.k8s_roles.get(body.get("role", ""))
        if known is None:
            return 400, {"errors": [f'invalid role name "{body.get("role", "")}"']}
        if known[0] != body.get("jwt"):
            return 403, _DENIED
        return self._login(known[1])

    def _preflight(self, path: str) -> tuple[int, Any]:
        mount = path.strip("/").split("/", 1)[0]
        if mount not in self.mounts:
            # Vault answers 403, not 404, so that this path cannot be used to discover mounts.
            return 403, _DENIED
        return 200, {"data": {"path": f"{mount}/", **self.mounts[mount]}}

    # --- KV v2 ----------------------------------------------------------------------------------------------------
    def _version_meta(self, entry: dict[str, Any], number: int) -> dict[str, Any]:
        v = entry["versions"][number]
        return {
            "created_time": v["created_time"],
            "custom_metadata": entry["custom_metadata"] or None,
            "deletion_time": v["deletion_time"],
            "destroyed": v["destroyed"],
            "version": number,
        }

    def _data_get(self, mount: str, key: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        entry = self.kv.get((mount, key))
        if entry is None or not entry["versions"]:
            return 404, {"errors": []}
        number = int(query.get("version") or 0) or entry["current_version"]
        if number not in entry["versions"]:
            return 404, {"errors": []}
        version = entry["versions"][number]
        meta = self._version_meta(entry, number)
        if version["destroyed"] or version["deletion_time"]:
            return 404, {"data": {"data": None, "metadata": meta}}
        return 200, {"data": {"data": dict(version["data"]), "metadata": meta}, "lease_id": "", "renewable": False}

    def _data_post(self, mount: str, key: str, query: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        if not isinstance(body.get("data"), dict):
            return 400, {"errors": ["no data provided"]}
        entry = self.kv.get((mount, key))
        current = entry["current_version"] if entry else 0
        cas = (body.get("options") or {}).get("cas")
        if (cas is None and entry and entry["cas_required"]) or (cas is not None and int(cas) != current):
            return 400, {"errors": [_CAS_ERROR]}
        if entry is None:
            entry = self.kv[(mount, key)] = self._new_entry()
        number = current + 1
        stamp = _now()
        version = {"data": body["data"], "created_time": stamp, "deletion_time": "", "destroyed": False}
        entry["versions"][number] = version
        entry["current_version"] = number
        entry["updated_time"] = stamp
        # Vault keeps max_versions versions (the key's setting, else 10, the mount default) and drops the oldest.
        for old in sorted(entry["versions"])[: -(entry["max_versions"] or _DEFAULT_MAX_VERSIONS)]:
            del entry["versions"][old]
        return 200, {"data": self._version_meta(entry, number)}

    def _new_entry(self) -> dict[str, Any]:
        stamp = _now()
        return {
            "versions": {},
            "current_version": 0,
            "custom_metadata": {},
            "created_time": stamp,
            "updated_time": stamp,
            "cas_required": False,
            "max_versions": 0,
        }

    def _metadata_get(self, mount: str, key: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        entry = self.kv.get((mount, key))
        if entry is None:
            return 404, {"errors": []}
        fields = ("created_time", "deletion_time", "destroyed")
        versions = {str(n): {f: v[f] for f in fields} for n, v in entry["versions"].items()}
        data = {
            "cas_required": entry["cas_required"],
            "created_time": entry["created_time"],
            "current_version": entry["current_version"],
            "custom_metadata": dict(entry["custom_metadata"]) or None,
            "delete_version_after": "0s",
            "max_versions": entry["max_versions"],
            "oldest_version": min(entry["versions"], default=0),
            "updated_time": entry["updated_time"],
            "versions": versions,
        }
        return 200, {"data": data}

    def _metadata_list(self, mount: str, key: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        prefix = f"{key.strip('/')}/" if key.strip("/") else ""
        keys: set[str] = set()
        for m, path in self.kv:
            if m == mount and path.startswith(prefix):
                head, slash, _ = path[len(prefix) :].partition("/")
                keys.add(head + slash)
        if not keys:
            return 404, {"errors": []}
        return 200, {"data": {"keys": sorted(keys)}}

    def _metadata_post(self, mount: str, key: str, query: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        custom = body.get("custom_metadata")
        if custom is not None:
            problems = self._custom_metadata_problems(custom)
            if problems:
                return 400, {"errors": problems}
        entry = self.kv.setdefault((mount, key), self._new_entry())
        if custom is not None:
            entry["custom_metadata"] = dict(custom)
        if "cas_required" in body:
            entry["cas_required"] = bool(body["cas_required"])
        if "max_versions" in body:
            entry["max_versions"] = int(body["max_versions"])
        entry["updated_time"] = _now()
        return 204, None

    @staticmethod
    def _custom_metadata_problems(custom: Any) -> list[str]:
        """The limits Vault documents: at most 64 keys, keys up to 128 bytes, values up to 512 bytes."""
        if not isinstance(custom, dict):
            return ["custom_metadata must be a map of strings"]
        problems = []
        if len(custom) > 64:
            problems.append(f"payload must contain at most 64 keys, provided {len(custom)}")
        for k, v in custom.items():
            if len(k.encode()) > 128:
                problems.append(f"length of key {k!r} is {len(k.encode())} but must be 128 or less")
            if not isinstance(v, str) or len(v.encode()) > 512:
                problems.append(f"value of key {k!r} must be a string of 512 bytes or less")
        return problems

    def _metadata_delete(self, mount: str, key: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        self.kv.pop((mount, key), None)
        return 204, None

    def _versions_op(self, mount: str, key: str, body: dict[str, Any], change: dict[str, Any]) -> tuple[int, Any]:
        if not body.get("versions"):
            return 400, {"errors": ["no version number provided"]}
        entry = self.kv.get((mount, key))
        for number in body["versions"] if entry else ():
            version = entry["versions"].get(int(number))
            if version is not None and not version["destroyed"]:
                version.update(change)
                if change.get("destroyed"):
                    version["data"] = None
        return 204, None

    def _delete_post(self, mount: str, key: str, query: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        return self._versions_op(mount, key, body, {"deletion_time": _now()})

    def _destroy_post(self, mount: str, key: str, query: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        return self._versions_op(mount, key, body, {"destroyed": True})

    def _undelete_post(self, mount: str, key: str, query: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        return self._versions_op(mount, key, body, {"deletion_time": ""})

    # PUT is POST's synonym in Vault's API.
    _data_put, _metadata_put, _delete_put, _destroy_put = _data_post, _metadata_post, _delete_post, _destroy_post
