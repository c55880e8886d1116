"""A protocol double of Azure Key Vault's secrets REST API, served over HTTPS as Key Vault is.

It answers what azure-keyvault-secrets sends: the unauthenticated first request gets Key Vault's 401 challenge
(``WWW-Authenticate: Bearer authorization="https://login.microsoftonline.com/TENANT",
resource="https://vault.azure.net"``); then ``PUT /secrets/{name}``, ``GET /secrets/{name}[/{version}]``,
``GET /secrets/{name}/versions``, ``PATCH /secrets/{name}/{version}`` (tags, enabled) and ``GET /secrets``, each with
an ``api-version`` query, answer with Key Vault's JSON bodies and errors: 404 SecretNotFound, 403 Forbidden (caller
not authorized, or a disabled version read), 401 with the challenge for an unknown token. Tokens come from
:meth:`issue_token` with the role ``officer`` (everything) or ``reader`` (get and list only).

TLS: :meth:`start` makes a CA and a server certificate for 127.0.0.1 with ``cryptography``; clients trust
``ca_file`` (``connection_verify`` or REQUESTS_CA_BUNDLE). Nothing is written outside a temporary directory that
:meth:`stop` removes.
"""

from __future__ import annotations

import re
import secrets
import shutil
import ssl
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from tests.doubles import DoubleServer, HttpDouble, JsonHandler
from tests.tls import write_test_pki

_NAME = re.compile(r"[0-9a-zA-Z-]{1,127}")
_ROUTE = re.compile(r"/secrets(?:/([^/]+)(?:/([^/]*))?)?/?")
_DELETED = re.compile(r"/deletedsecrets/([^/]+)/?")
_WRITES = frozenset({"PUT", "PATCH", "DELETE"})


def _error(status: int, code: str, message: str, inner: str | None = None) -> tuple[int, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if inner:
        error["innererror"] = {"code": inner}
    return status, {"error": error}


def _not_found(what: str) -> tuple[int, Any]:
    return _error(
        404,
        "SecretNotFound",
        f"A secret with (name/id) {what} was not found in this key vault. If you recently deleted this secret you "
        "may be able to recover it using the correct recovery command. For help resolving this issue, please see "
        "https://go.microsoft.com/fwlink/?linkid=2125182",
    )


class AzureKeyVaultDouble(HttpDouble):
    """In-memory Key Vault (one vault) over HTTPS, with Key Vault's challenge authentication."""

    def __init__(self, tenant: str = "00000000-0000-0000-0000-000000000001") -> None:
        super().__init__()
        self.tenant = tenant
        self.tokens: dict[str, str] = {}  # bearer token -> "officer" or "reader"
        self.secrets: dict[str, list[dict[str, Any]]] = {}  # name -> versions, oldest first
        self.deleted: dict[str, list[dict[str, Any]]] = {}  # soft-deleted (recoverable) secrets, until purged
        self._folder: Path | None = None

    # --- set-up ---------------------------------------------------------------------------------------------------
    def issue_token(self, role: str = "officer") -> str:
        token = f"double-{role}-" + secrets.token_hex(8)
        self.tokens[token] = role
        return token

    @property
    def url(self) -> str:
        return super().url.replace("http://", "https://", 1)

    @property
    def ca_file(self) -> str:
        assert self._folder is not None, "start() the double first"
        return str(self._folder / "ca.pem")

    def start(self) -> AzureKeyVaultDouble:
        self._folder = Path(tempfile.mkdtemp(prefix="keyvault-double-"))
        _, cert, key = write_test_pki(self._folder, "Key Vault double")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self._server = DoubleServer(("127.0.0.1", 0), JsonHandler)
        self._server.double = self
        # The handshake runs in the request's thread, so a client that stalls cannot block accept().
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True, do_handshake_on_connect=False)
        self._thread = threading.Thread(target=self._server.serve_forever, name=type(self).__name__, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        super().stop()
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    # --- HTTP -----------------------------------------------------------------------------------------------------
    def malformed_body(self) -> Any:
        return _error(400, "BadParameter", "The request body is not valid JSON.")[1]

    def _challenge(self, message: str) -> tuple[int, Any, dict[str, str]]:
        header = (
            f'Bearer authorization="https://login.microsoftonline.com/{self.tenant}", '
            'resource="https://vault.azure.net"'
        )
        status, body = _error(401, "Unauthorized", message)
        return status, body, {"WWW-Authenticate": header}

    def respond(
        self, method: str, path: str, query: dict[str, str], body: Any, headers: Any
    ) -> tuple[int, Any, dict[str, str]]:
        """Status, JSON body and extra response headers (the challenge) for one request."""
        auth = headers.get("Authorization") or ""
        if not auth.startswith("Bearer "):
            return self._challenge("AKV10000: Request is missing a Bearer or PoP token.")
        role = self.tokens.get(auth.removeprefix("Bearer "))
        if role is None:
            return self._challenge("AKV10032: Invalid issuer or token.")
        if not query.get("api-version"):
            return (*_error(400, "BadParameter", "The api-version query parameter is missing."), {})
        if role == "reader" and method in _WRITES:
            action = "setSecret" if method == "PUT" else "update"
            return (
                *_error(
                    403,
                    "Forbidden",
                    "Caller is not authorized to perform action on resource.\r\nIf role assignments, deny "
                    f"assignments or role definitions were changed recently, please observe propagation time.\r\n"
                    f"Action: 'Microsoft.KeyVault/vaults/secrets/{action}/action'",
                    "ForbiddenByRbac",
                ),
                {},
            )
        base = f"https://{headers.get('Host')}"
        if deleted := _DELETED.fullmatch(path):
            return (*self._deleted(base, method, deleted.group(1)), {})
        match = _ROUTE.fullmatch(path)
        if match is None:
            return (*_error(404, "NotFound", f"The requested resource {path} was not found."), {})
        name, version = match.groups()
        if name is None and method == "GET":
            return (*self._list(base), {})
        if name is not None and not _NAME.fullmatch(name):
            return (*_error(400, "BadParameter", "The secret name is invalid: use 1-127 letters, digits and '-'."), {})
        if method == "PUT" and version is None:
            return (*self._set(base, name, body or {}), {})
        if method == "GET" and version == "versions":
            return (*self._versions(base, name), {})
        if method == "GET":
            return (*self._get(base, name, version or ""), {})
        if method == "PATCH" and version:
            return (*self._update(base, name, version, body or {}), {})
        if method == "DELETE" and version is None:
            return (*self._delete(base, name), {})
        return (*_error(405, "MethodNotAllowed", f"{method} is not allowed on {path}."), {})

    # --- secrets --------------------------------------------------------------------------------------------------
    def _item(self, base: str, name: str, version: dict[str, Any], value: bool) -> dict[str, Any]:
        bundle: dict[str, Any] = {
            "id": f"{base}/secrets/{name}/{version['version']}",
            "attributes": dict(version["attributes"]),
            "tags": dict(version["tags"]),
        }
        if version.get("contentType"):
            bundle["contentType"] = version["contentType"]
        if value:
            bundle["value"] = version["value"]
        return bundle

    def _set(self, base: str, name: str, body: dict[str, Any]) -> tuple[int, Any]:
        if not isinstance(body.get("value"), str):
            return _error(400, "BadParameter", "Property 'value' is required.")
        if name in self.deleted:
            return _error(
                409,
                "Conflict",
                f"Secret {name} is currently in a deleted but recoverable state, and its "
                "name cannot be reused; in this state, the secret can only be recovered or purged.",
            )
        now = int(time.time())
        attributes = {"enabled": True, **(body.get("attributes") or {})}
        version = {
            "version": uuid.uuid4().hex,
            "value": body["value"],
            "tags": dict(body.get("tags") or {}),
            "contentType": body.get("contentType"),
            "attributes": {
                "enabled": bool(attributes["enabled"]),
                "created": now,
                "updated": now,
                "recoveryLevel": "Recoverable+Purgeable",
                "recoverableDays": 90,
            },
        }
        if len(version["tags"]) > 15:
            return _error(400, "BadParameter", "A secret can have at most 15 tags.")
        self.secrets.setdefault(name, []).append(version)
        return 200, self._item(base, name, version, value=True)

    def _find(self, name: str, version_id: str) -> dict[str, Any] | None:
        versions = self.secrets.get(name) or []
        if not version_id:
            return versions[-1] if versions else None
        return next((v for v in versions if v["version"] == version_id), None)

    def _get(self, base: str, name: str, version_id: str) -> tuple[int, Any]:
        version = self._find(name, version_id)
        if version is None:
            return _not_found(f"{name}/{version_id}" if version_id else name)
        if not version["attributes"]["enabled"]:
            return _error(403, "Forbidden", "Operation get is not allowed on a disabled secret.", "SecretDisabled")
        return 200, self._item(base, name, version, value=True)

    def _versions(self, base: str, name: str) -> tuple[int, Any]:
        if name not in self.secrets:
            return _not_found(name)
        return 200, {"value": [self._item(base, name, v, value=False) for v in self.secrets[name]], "nextLink": None}

    def _update(self, base: str, name: str, version_id: str, body: dict[str, Any]) -> tuple[int, Any]:
        version = self._find(name, version_id)
        if version is None:
            return _not_found(f"{name}/{version_id}")
        if "tags" in body:
            version["tags"] = dict(body["tags"] or {})
        if "enabled" in (body.get("attributes") or {}):
            version["attributes"]["enabled"] = bool(body["attributes"]["enabled"])
        if "contentType" in body:
            version["contentType"] = body["contentType"]
        version["attributes"]["updated"] = int(time.time())
        return 200, self._item(base, name, version, value=False)

    def _deleted_item(self, base: str, name: str) -> dict[str, Any]:
        item = self._item(base, name, self.deleted[name][-1], value=False)
        return {**item, "recoveryId": f"{base}/deletedsecrets/{name}", "deletedDate": int(time.time())}

    def _delete(self, base: str, name: str) -> tuple[int, Any]:
        """Soft delete (the vault's default): the secret moves to the deleted secrets, its name still taken."""
        if name not in self.secrets:
            return _not_found(name)
        self.deleted[name] = self.secrets.pop(name)
        return 200, self._deleted_item(base, name)

    def _deleted(self, base: str, method: str, name: str) -> tuple[int, Any]:
        if name not in self.deleted:
            return _error(404, "DeletedSecretNotFound", f"Deleted Secret not found: {name}")
        if method == "GET":
            return 200, self._deleted_item(base, name)
        if method == "DELETE":  # purge
            del self.deleted[name]
            return 204, None
        return _error(405, "MethodNotAllowed", f"{method} is not allowed on a deleted secret.")

    def _list(self, base: str) -> tuple[int, Any]:
        items = []
        for name in sorted(self.secrets):
            latest = self.secrets[name][-1]
            item = self._item(base, name, latest, value=False)
            item["id"] = f"{base}/secrets/{name}"
            items.append(item)
        return 200, {"value": items, "nextLink": None}
