"""The example auth service: issues and verifies JWTs with the keyset it reads from a secret store, and optionally
signs users in over SAML as a service provider with the key pairs of a second secret (:mod:`.saml`).

It reads the keyset document the rotation runbook writes (a ``keys`` list of ``kid``, ``alg``, ``status`` and ``k``
or ``pem``) with nothing but ``json`` and python-jose, as an independent consumer would: it deliberately does not
import the project's ``targets.jwt.keyset``, so the end-to-end tests check the stored format, not one parser against
itself. Only reading the store goes through the project (``stores``), since the local store's encryption is ours.

Keys and tokens never reach a log line or a response other than the token issued.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from jose import jwk, jwt
from jose.exceptions import ExpiredSignatureError, JOSEError

from examples.auth_service.documents import stored_keys
from examples.auth_service.saml_settings import BINDING_NAMES, SamlSettings, SamlUnusable
from examples.auth_service.saml_settings import SignInRefused as SamlSignInRefused
from stores import Stage, open_store
from stores.errors import StoreError

if TYPE_CHECKING:
    from examples.auth_service.saml import LoadedSaml, SamlServiceProvider

log = logging.getLogger("auth_service")
ALGORITHMS = ("HS256", "RS256", "ES256")
_MAX_BODY = 64 * 1024
_MAX_SAML_BODY = 512 * 1024  # a SAMLResponse with an encrypted, signed assertion is tens of kilobytes


class KeysetUnusable(Exception):
    """The stored keyset cannot be used; the message names the problem, never key material."""


@dataclass(frozen=True)
class ServiceKey:
    kid: str
    alg: str
    signer: Any = field(repr=False)  # the HS256 secret or a jose private key
    verifier: Any = field(repr=False)  # the HS256 secret or the public JWK


@dataclass(frozen=True)
class LoadedKeyset:
    """One immutable snapshot: a reload swaps the whole object, so a request sees one keyset from start to end."""

    keys: Mapping[str, ServiceKey]
    signing_kid: str
    jwks: dict[str, list[dict[str, Any]]]
    loaded_at: datetime

    def health(self) -> dict[str, Any]:
        return {"kids": list(self.keys), "signing_kid": self.signing_kid, "loaded_at": self.loaded_at.isoformat()}


def _service_key(entry: Any, index: int) -> tuple[ServiceKey, str, dict[str, Any] | None]:
    if not isinstance(entry, dict):
        raise KeysetUnusable(f"keys[{index}] is not an object")
    kid, alg, status = entry.get("kid"), entry.get("alg"), entry.get("status")
    if not isinstance(kid, str) or not kid:
        raise KeysetUnusable(f"keys[{index}] has no kid")
    if alg not in ALGORITHMS:
        raise KeysetUnusable(f"key {kid}: unsupported alg (this service knows {', '.join(ALGORITHMS)})")
    if status not in ("signing", "verify"):
        raise KeysetUnusable(f"key {kid}: status must be 'signing' or 'verify'")
    if alg == "HS256":
        secret = entry.get("k")
        if not isinstance(secret, str) or not secret:
            raise KeysetUnusable(f"key {kid}: an HS256 key needs its secret in 'k'")
        return ServiceKey(kid, alg, secret, secret), status, None
    try:
        private = jwk.construct(entry.get("pem"), alg)
        public = private.public_key().to_dict()
    except (JOSEError, TypeError, ValueError):
        # jose's messages are not guaranteed free of the input: name the key only.
        raise KeysetUnusable(f"key {kid}: 'pem' is not a usable {alg} private key") from None
    public_jwk = {**public, "kid": kid, "use": "sig"}
    return ServiceKey(kid, alg, private, public_jwk), status, public_jwk


def parse_keyset(text: str) -> LoadedKeyset:
    """The keys of a stored keyset document; :class:`KeysetUnusable` when it cannot serve."""
    entries = stored_keys(text, KeysetUnusable, "keyset")
    keys: dict[str, ServiceKey] = {}
    signing: list[str] = []
    jwks: list[dict[str, Any]] = []
    for index, entry in enumerate(entries):
        key, status, public_jwk = _service_key(entry, index)
        if key.kid in keys:
            raise KeysetUnusable(f"duplicate kid {key.kid}")
        keys[key.kid] = key
        if status == "signing":
            signing.append(key.kid)
        if public_jwk is not None:
            jwks.append(public_jwk)
    if len(signing) != 1:
        raise KeysetUnusable(f"the keyset needs exactly one signing key, it has {len(signing)}")
    return LoadedKeyset(keys, signing[0], {"keys": jwks}, datetime.now(UTC))


class TokenInvalid(Exception):
    """A bearer token this service does not accept; the message never holds the token."""


class AuthService:
    """The keyset currently in use and the operations of the HTTP API."""

    def __init__(self, store_uri: str, token_lifetime: float, saml: SamlSettings | None = None) -> None:
        self.store_uri = store_uri
        self.token_lifetime = token_lifetime
        self._reload_lock = threading.Lock()
        self.keyset = self._load()
        self.saml: SamlServiceProvider | None = None
        if saml is None:
            return
        from examples.auth_service.saml import SamlServiceProvider  # pysaml2: only for a SAML service provider

        try:
            self.saml = SamlServiceProvider(saml)
        except SamlUnusable as exc:
            raise KeysetUnusable(f"cannot load the SAML key set: {exc}") from None

    def _load(self) -> LoadedKeyset:
        try:
            return parse_keyset(open_store(self.store_uri).read(Stage.CURRENT))
        except (StoreError, KeysetUnusable) as exc:
            raise KeysetUnusable(f"cannot load the keyset from {self.store_uri}: {exc}") from None

    def reload(self) -> LoadedKeyset:
        """Read the stores again; the new keys replace the old ones only if all of them are usable."""
        with self._reload_lock:
            keyset = self._load()
            saml: LoadedSaml | None = None
            if self.saml is not None:
                try:
                    saml = self.saml.load()
                except SamlUnusable as exc:
                    raise KeysetUnusable(f"cannot load the SAML key set: {exc}") from None
            self.keyset = keyset  # one reference swap: requests in flight keep the snapshot they started with
            if self.saml is not None and saml is not None:
                self.saml.current = saml
        log.info("keyset reloaded: kids %s, signing %s", ", ".join(keyset.keys), keyset.signing_kid)
        if saml is not None:
            log.info("SAML keys reloaded: signing %s, published %s", saml.signing, ", ".join(saml.published))
        return keyset

    def health(self) -> dict[str, Any]:
        health = self.keyset.health()
        if self.saml is not None:
            health["saml"] = self.saml.current.health()
        return health

    def reload_quietly(self) -> None:
        """Reload from a signal: report a failure in the log and keep serving."""
        try:
            self.reload()
        except KeysetUnusable as exc:
            log.error("reload failed, keeping the previous keyset: %s", exc)

    def issue(self, subject: str) -> dict[str, Any]:
        keyset = self.keyset
        key = keyset.keys[keyset.signing_kid]
        now = int(time.time())
        claims = {"sub": subject, "iat": now, "exp": now + int(self.token_lifetime), "jti": uuid.uuid4().hex}
        token = jwt.encode(claims, key.signer, algorithm=key.alg, headers={"kid": key.kid})
        return {"access_token": token, "token_type": "Bearer", "expires_in": int(self.token_lifetime)}

    def verify(self, token: str) -> dict[str, Any]:
        keyset = self.keyset
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except JOSEError:
            raise TokenInvalid("malformed token") from None
        key = keyset.keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise TokenInvalid("unknown key id")
        try:
            return jwt.decode(token, key.verifier, algorithms=[key.alg])
        except ExpiredSignatureError:
            raise TokenInvalid("token expired") from None
        except JOSEError:
            raise TokenInvalid("signature or claims rejected") from None


class Handler(BaseHTTPRequestHandler):
    server: AuthHTTPServer

    def _send(self, status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> None:
        self._send_text(status, json.dumps(body), "application/json", headers)

    def _json_body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 < length <= _MAX_BODY:
            return None
        try:
            return json.loads(self.rfile.read(length))
        except ValueError:
            return None

    def do_GET(self) -> None:
        app = self.server.app
        path = self.path.split("?", 1)[0]
        if path == "/health":
            self._send(200, app.health())
        elif path == "/.well-known/jwks.json":
            self._send(200, app.keyset.jwks)
        elif path == "/me":
            scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                self._send(401, {"error": "missing bearer token"}, {"WWW-Authenticate": "Bearer"})
                return
            try:
                claims = app.verify(token.strip())
            except TokenInvalid as exc:
                self._send(401, {"error": str(exc)}, {"WWW-Authenticate": 'Bearer error="invalid_token"'})
                return
            self._send(200, {"claims": claims})
        elif path.startswith("/saml/") and app.saml is not None:
            self._saml_get(app.saml, path)
        else:
            self._send(404, {"error": "not found"})

    def _send_text(self, status: int, body: str, content_type: str, headers: Mapping[str, str] | None = None) -> None:
        payload = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def _saml_get(self, saml: SamlServiceProvider, path: str) -> None:
        if path == "/saml/metadata":
            self._send_text(200, saml.current.metadata(), "application/samlmetadata+xml")
        elif path == "/saml/login":
            binding = parse_qs(urlsplit(self.path).query).get("binding", ["redirect"])[0]
            if binding not in BINDING_NAMES:
                self._send(400, {"error": f"binding must be one of {', '.join(BINDING_NAMES)}"})
                return
            info = saml.login(binding)
            if binding == "redirect":
                self._send_text(303, "", "text/plain", {"Location": dict(info["headers"])["Location"]})
            else:
                self._send_text(200, info["data"], "text/html; charset=utf-8")
        else:
            self._send(404, {"error": "not found"})

    def _saml_acs(self, saml: SamlServiceProvider) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 < length <= _MAX_SAML_BODY:
            self._send(400, {"error": "post the IdP's form (SAMLResponse) to this endpoint"})
            return
        form = parse_qs(self.rfile.read(length).decode(errors="replace"))
        response = form.get("SAMLResponse", [""])[0]
        if not response:
            self._send(400, {"error": "the form has no SAMLResponse"})
            return
        try:
            answer = saml.consume(response)
        except SamlSignInRefused as exc:
            log.warning("sign-in refused: %s", exc)
            self._send(401, {"error": str(exc)})
            return
        self._send(200, answer)

    def do_POST(self) -> None:
        app = self.server.app
        path = self.path.split("?", 1)[0]
        if path == "/token":
            body = self._json_body()
            subject = body.get("sub") if isinstance(body, dict) else None
            if not isinstance(subject, str) or not 0 < len(subject) <= 256:
                self._send(400, {"error": 'send a JSON body {"sub": "..."} with a subject of 1 to 256 characters'})
                return
            self._send(200, app.issue(subject))
        elif path == "/saml/acs" and app.saml is not None:
            self._saml_acs(app.saml)
        elif path == "/reload":
            try:
                app.reload()
            except KeysetUnusable as exc:
                log.error("reload failed, keeping the previous keyset: %s", exc)
                self._send(500, {"error": f"reload failed, still serving the previous keyset: {exc}"})
                return
            self._send(200, app.health())
        else:
            self._send(404, {"error": "not found"})

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # The method and path only: query strings and headers may carry tokens.
        path = getattr(self, "path", "").split("?", 1)[0]
        status = code.value if isinstance(code, HTTPStatus) else code
        log.info("%s %s %s", getattr(self, "command", None) or "-", path or "-", status)

    def log_message(self, format: str, *args: Any) -> None:
        """Silenced: the default would print raw request lines (see :meth:`log_request`)."""


class AuthHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], app: AuthService) -> None:
        self.app = app
        super().__init__(address, Handler)
