"""The JWT keyset: the signing key and at most one verify-only key, as stored in a secret.

The stored value is a JSON document::

    {"keys": [{"kid": "...", "alg": "HS256", "status": "signing", "created_at": "...", "k": "..."},
              {"kid": "...", "alg": "RS256", "status": "verify", "created_at": "...", "pem": "-----BEGIN..."}],
     "JWT_SECRET_KEY_NEW": "...", "JWT_SECRET_KEY_OLD": "..."}

``k`` is an HS256 secret used as is (its UTF-8 bytes are the HMAC key, as services that read
``JWT_SECRET_KEY_NEW`` use it); ``pem`` is a PKCS#8 private key. The two flat fields repeat the HS256 secrets for
services that read those two variables: NEW signs, OLD only verifies and is absent when there is no old HS256 key.
A legacy value holding only the two variables, or a bare HS256 secret, is read as well.

Pure functions and pydantic models: no Prefect, no store. Error messages name the problem and the key id, never
key material; ``repr`` shows key ids only.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import string
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jose import jwk, jwt
from jose.exceptions import ExpiredSignatureError, JOSEError, JWTClaimsError, JWTError
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, ValidationError, model_validator

from errors import BadInput, CheckFailed
from targets.private_keys import load_pem_private_key

Algorithm = Literal["HS256", "RS256", "ES256"]
KeyStatus = Literal["signing", "verify"]
ALGORITHMS: tuple[str, ...] = ("HS256", "RS256", "ES256")
NEW_VARIABLE = "JWT_SECRET_KEY_NEW"
OLD_VARIABLE = "JWT_SECRET_KEY_OLD"
MIN_HS_BITS = 256
DEFAULT_HS_BITS = 512
RSA_BITS = 3072
_MIN_RSA_BITS = 2048  # RFC 7518 section 3.3
_KID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
_HEX = frozenset(string.hexdigits)
_BASE64 = frozenset(string.ascii_letters + string.digits + "-_+/=")


class KeysetError(BadInput):
    """A keyset that cannot be used, or a request it cannot serve. The message never holds key material."""


class TokenRejected(CheckFailed):
    """A token that the keyset does not accept. The message never holds the token."""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64url_int(value: int) -> str:
    return _b64url(value.to_bytes((value.bit_length() + 7) // 8 or 1, "big"))


def hs_strength_bits(secret: str) -> int:
    """The bits an HS256 secret can carry: 4 per hex digit, 6 per base64 character, else 8 per byte.

    Entropy cannot be measured; counting what the characters can hold keeps a 32-hex-digit (128-bit) secret from
    passing as 256 bits.
    """
    chars = set(secret)
    if chars <= _HEX:
        return 4 * len(secret)
    if chars <= _BASE64:
        return 6 * len(secret.rstrip("="))
    return 8 * len(secret.encode())


def _check_hs_secret(secret: str, where: str) -> None:
    if hs_strength_bits(secret) < MIN_HS_BITS:
        raise KeysetError(
            f"{where}: the HS256 secret is shorter than {MIN_HS_BITS} bits; "
            f"generate one with at least {MIN_HS_BITS} random bits (new_key('HS256', {DEFAULT_HS_BITS}))"
        )


def _load_private_key(pem: str, alg: str, where: str) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    try:
        private = load_pem_private_key(pem)
    except (ValueError, TypeError):
        raise KeysetError(f"{where}: pem is not an unencrypted PEM private key") from None
    if alg == "RS256":
        if not isinstance(private, rsa.RSAPrivateKey):
            raise KeysetError(f"{where}: alg RS256 needs an RSA private key, pem holds another kind")
        if private.key_size < _MIN_RSA_BITS:
            raise KeysetError(f"{where}: the RSA key has {private.key_size} bits; RS256 needs at least {_MIN_RSA_BITS}")
        return private
    if not isinstance(private, ec.EllipticCurvePrivateKey) or not isinstance(private.curve, ec.SECP256R1):
        raise KeysetError(f"{where}: alg ES256 needs a P-256 (secp256r1) EC private key, pem holds another kind")
    return private


def _public_jwk_fields(public: rsa.RSAPublicKey | ec.EllipticCurvePublicKey) -> dict[str, str]:
    """The required members of a public JWK (RFC 7518 section 6), the ones RFC 7638 hashes."""
    if isinstance(public, rsa.RSAPublicKey):
        numbers = public.public_numbers()
        return {"e": _b64url_int(numbers.e), "kty": "RSA", "n": _b64url_int(numbers.n)}
    point = public.public_numbers()
    return {
        "crv": "P-256",
        "kty": "EC",
        "x": _b64url(point.x.to_bytes(32, "big")),
        "y": _b64url(point.y.to_bytes(32, "big")),
    }


def thumbprint(fields: Mapping[str, str]) -> str:
    """RFC 7638 JWK thumbprint (SHA-256) of a JWK's required members."""
    canonical = json.dumps(dict(sorted(fields.items())), separators=(",", ":"))
    return _b64url(hashlib.sha256(canonical.encode()).digest())


def hs_kid(secret: str) -> str:
    """The kid of an HS256 secret: the RFC 7638 thumbprint of its ``oct`` JWK, so a legacy value gets stable kids."""
    return thumbprint({"k": _b64url(secret.encode()), "kty": "oct"})


class JwtKey(BaseModel):
    """One key: HS256 with its secret in ``k``, or RS256/ES256 with a PEM private key in ``pem``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kid: str = Field(pattern=_KID_PATTERN)
    alg: Algorithm
    status: KeyStatus
    created_at: datetime | None = None
    k: SecretStr | None = None
    pem: SecretStr | None = None
    # Loading and checking an RSA key takes ~0.1 s: done once, in validation.
    _private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | None = PrivateAttr(default=None)
    _public_fields: dict[str, str] | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _check_material(self) -> JwtKey:
        where = f"key {self.kid}"
        if self.alg == "HS256":
            if self.k is None or self.pem is not None:
                raise KeysetError(f"{where}: an HS256 key holds its secret in 'k' and has no 'pem'")
            _check_hs_secret(self.k.get_secret_value(), where)
        else:
            if self.pem is None or self.k is not None:
                raise KeysetError(f"{where}: an {self.alg} key holds a PEM private key in 'pem' and has no 'k'")
            self._private = _load_private_key(self.pem.get_secret_value(), self.alg, where)
            self._public_fields = _public_jwk_fields(self._private.public_key())
        return self

    def material(self) -> str:
        """The private material: the HS256 secret or the PEM private key. Handle with care."""
        value = self.k if self.alg == "HS256" else self.pem
        assert value is not None  # guaranteed by _check_material
        return value.get_secret_value()

    def signing_material(self) -> str | jwk.Key:
        """What python-jose signs with: the HS256 secret, or the already loaded private key."""
        return self.material() if self._private is None else jwk.construct(self._private, self.alg)

    def public_jwk(self) -> dict[str, str] | None:
        """The public JWK of an RS256/ES256 key, with kid, alg and use; None for HS256, which has no public part."""
        if self._public_fields is None:
            return None
        return {**self._public_fields, "kid": self.kid, "alg": self.alg, "use": "sig"}

    def document(self) -> dict[str, str]:
        """The key as stored in the secret's ``keys`` list (with its material)."""
        doc = {"kid": self.kid, "alg": self.alg, "status": self.status}
        if self.created_at is not None:
            doc["created_at"] = self.created_at.isoformat()
        doc["k" if self.alg == "HS256" else "pem"] = self.material()
        return doc


class JwtKeyset(BaseModel):
    """Exactly one signing key and at most one verify-only key, with unique kids."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    keys: tuple[JwtKey, ...]

    @model_validator(mode="after")
    def _check_keys(self) -> JwtKeyset:
        kids = [key.kid for key in self.keys]
        duplicates = sorted({kid for kid in kids if kids.count(kid) > 1})
        if duplicates:
            raise KeysetError(f"duplicate kid {', '.join(duplicates)}: every key needs its own kid")
        signing = [key.kid for key in self.keys if key.status == "signing"]
        if not signing:
            raise KeysetError(
                f"the keyset has no signing key (kids: {', '.join(kids) or 'none'}); exactly one key needs "
                "status 'signing'"
            )
        if len(signing) > 1:
            raise KeysetError(
                f"the keyset has {len(signing)} signing keys ({', '.join(signing)}); exactly one may sign"
            )
        verify = [key.kid for key in self.keys if key.status == "verify"]
        if len(verify) > 1:
            raise KeysetError(
                f"the keyset has {len(verify)} verify-only keys ({', '.join(verify)}); at most one old key may "
                "overlap the signing key: remove the older ones"
            )
        return self

    @property
    def signing_key(self) -> JwtKey:
        return next(key for key in self.keys if key.status == "signing")

    @property
    def previous_key(self) -> JwtKey | None:
        """The verify-only key, if the keyset has one."""
        return next((key for key in self.keys if key.status == "verify"), None)

    def key(self, kid: str) -> JwtKey:
        """The key with this kid; :class:`KeysetError` if the keyset has none."""
        for key in self.keys:
            if key.kid == kid:
                return key
        raise KeysetError(f"no key with kid {kid} in the keyset (kids: {', '.join(k.kid for k in self.keys)})")

    @classmethod
    def from_secret(cls, text: str) -> JwtKeyset:
        """Parse and validate a stored value: the JSON document, the two variables alone, or a bare HS256 secret."""
        text = text.strip()
        if not text:
            raise KeysetError("the secret is empty: store a JWT keyset (JwtKeyset.to_secret) or an HS256 secret")
        if text[0] in '{["':
            try:
                document = json.loads(text)
            except json.JSONDecodeError as exc:
                raise KeysetError(
                    f"the keyset is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
                ) from None
            if not isinstance(document, dict):
                raise KeysetError(
                    f"the keyset must be a JSON object with a 'keys' list, not a JSON {type(document).__name__}"
                )
            return _from_document(document)
        if any(char.isspace() for char in text):
            raise KeysetError(
                "the secret is not JSON and not a bare HS256 secret (it contains whitespace): "
                "store a JWT keyset document or a single HS256 secret"
            )
        return cls(keys=(_legacy_key(text, "signing", "the secret"),))

    def to_secret(self) -> str:
        """The stored value: the keys list plus the two flat HS256 variables."""
        return json.dumps({"keys": [key.document() for key in self.keys], **_flat_variables(self)})


def _flat_variables(keyset: JwtKeyset) -> dict[str, str]:
    flat = {}
    if keyset.signing_key.alg == "HS256":
        flat[NEW_VARIABLE] = keyset.signing_key.material()
    previous = keyset.previous_key
    if previous is not None and previous.alg == "HS256":
        flat[OLD_VARIABLE] = previous.material()
    return flat


def _legacy_key(secret: Any, status: KeyStatus, name: str) -> JwtKey:
    if not isinstance(secret, str) or not secret:
        raise KeysetError(f"{name} must be a non-empty string holding an HS256 secret")
    _check_hs_secret(secret, name)
    return JwtKey(kid=hs_kid(secret), alg="HS256", status=status, k=SecretStr(secret))


def _safe_alg(value: Any) -> str:
    # An alg is not secret, but a value pasted into the wrong field could be: echo only what looks like an alg.
    return repr(value) if isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9]{1,10}", value) else "(not shown)"


def _parse_key(raw: Any, index: int) -> JwtKey:
    where = f"keys[{index}]"
    if not isinstance(raw, dict):
        raise KeysetError(f"{where} must be a JSON object with kid, alg, status and k or pem")
    if isinstance(raw.get("kid"), str) and re.fullmatch(_KID_PATTERN, raw["kid"]):
        where += f" (kid {raw['kid']})"
    if raw.get("alg") not in ALGORITHMS:
        raise KeysetError(f"{where}: unknown alg {_safe_alg(raw.get('alg'))}; use one of {', '.join(ALGORITHMS)}")
    try:
        return JwtKey.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, error['loc'])) or 'key'}: {error['msg']}"
            for error in exc.errors(include_input=False, include_url=False)
        )
        raise KeysetError(f"{where}: {problems}") from None


def _from_document(document: dict[str, Any]) -> JwtKeyset:
    unknown = sorted(set(document) - {"keys", NEW_VARIABLE, OLD_VARIABLE})
    if unknown:
        raise KeysetError(
            f"unknown field {', '.join(map(repr, unknown))} in the keyset: it holds only keys, {NEW_VARIABLE} and "
            f"{OLD_VARIABLE}; keep other settings in another secret"
        )
    if "keys" not in document:
        if NEW_VARIABLE not in document:
            raise KeysetError(f"the keyset has neither a 'keys' list nor {NEW_VARIABLE}: there is no signing key")
        new, old = document[NEW_VARIABLE], document.get(OLD_VARIABLE)
        keys = [_legacy_key(new, "signing", NEW_VARIABLE)]
        if old not in (None, ""):
            if old == new:
                raise KeysetError(f"{OLD_VARIABLE} equals {NEW_VARIABLE}: leave {OLD_VARIABLE} empty instead")
            keys.append(_legacy_key(old, "verify", OLD_VARIABLE))
        return JwtKeyset(keys=tuple(keys))
    if not isinstance(document["keys"], list):
        raise KeysetError("'keys' must be a JSON list of keys")
    keyset = JwtKeyset(keys=tuple(_parse_key(raw, index) for index, raw in enumerate(document["keys"])))
    expected = _flat_variables(keyset)
    for name, role in ((NEW_VARIABLE, "the signing key"), (OLD_VARIABLE, "the verify-only key")):
        given = document.get(name)
        # The flat variables are optional on input; when present they must repeat the keys list exactly.
        if given is not None and given != expected.get(name, ""):
            raise KeysetError(
                f"{name} does not match {role} of the keys list (or that key is not HS256): "
                "the flat variables must repeat the keys list; rewrite the keyset with to_secret()"
            )
    return keyset


def new_key(alg: str = "HS256", bits: int = DEFAULT_HS_BITS) -> JwtKey:
    """A new signing key: ``bits`` random bits for HS256 (at least 256, a multiple of 8), RSA 3072 for RS256,
    P-256 for ES256 (``bits`` applies to HS256 only). The kid is the key's RFC 7638 thumbprint."""
    created_at = datetime.now(UTC)
    if alg == "HS256":
        if bits < MIN_HS_BITS or bits % 8:
            raise KeysetError(f"an HS256 key needs at least {MIN_HS_BITS} bits in whole bytes; {bits} bits asked")
        secret = _b64url(secrets.token_bytes(bits // 8))
        return JwtKey(kid=hs_kid(secret), alg="HS256", status="signing", created_at=created_at, k=SecretStr(secret))
    if alg == "RS256":
        private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = rsa.generate_private_key(65537, RSA_BITS)
    elif alg == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
    else:
        raise KeysetError(f"unknown alg {_safe_alg(alg)}; use one of {', '.join(ALGORITHMS)}")
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    kid = thumbprint(_public_jwk_fields(private.public_key()))
    return JwtKey(kid=kid, alg=alg, status="signing", created_at=created_at, pem=SecretStr(pem))


def published(keyset: JwtKeyset, key: JwtKey) -> JwtKeyset:
    """``key`` beside the signing key, verify-only (older verify-only keys are dropped): consumers learn a key
    before any token is signed with it."""
    if any(existing.kid == key.kid for existing in keyset.keys):
        raise KeysetError(f"duplicate kid {key.kid}: the new key is already in the keyset")
    return JwtKeyset(keys=(keyset.signing_key, key.model_copy(update={"status": "verify"})))


def switched(keyset: JwtKeyset) -> JwtKeyset:
    """The verify-only key signs; the signing key only verifies."""
    if keyset.previous_key is None:
        raise KeysetError("the keyset has no verify-only key to switch signing to")
    return JwtKeyset(
        keys=(
            keyset.previous_key.model_copy(update={"status": "signing"}),
            keyset.signing_key.model_copy(update={"status": "verify"}),
        )
    )


def rotated(keyset: JwtKeyset, key: JwtKey) -> JwtKeyset:
    """``key`` signs, the current signing key only verifies, older verify-only keys are dropped."""
    return switched(published(keyset, key))


def without_previous(keyset: JwtKeyset) -> JwtKeyset:
    """The keyset with its signing key alone."""
    return JwtKeyset(keys=(keyset.signing_key,))


def public_jwks(keyset: JwtKeyset) -> dict[str, list[dict[str, str]]]:
    """The JWKS document: the public RS256/ES256 keys; HS256 keys have no public part and are left out."""
    return {"keys": [jwk for key in keyset.keys if (jwk := key.public_jwk()) is not None]}


def sign_token(keyset_or_key: JwtKeyset | JwtKey, claims: Mapping[str, Any], kid: str | None = None) -> str:
    """A token over ``claims`` with ``kid`` in its header: the keyset's signing key, or the key ``kid`` (a
    verify-only key too, for checks that old tokens still verify)."""
    if isinstance(keyset_or_key, JwtKey):
        key = keyset_or_key
        if kid is not None and kid != key.kid:
            raise KeysetError(f"kid {kid} asked, but the key given is {key.kid}")
    else:
        key = keyset_or_key.signing_key if kid is None else keyset_or_key.key(kid)
    return jwt.encode(dict(claims), key.signing_material(), algorithm=key.alg, headers={"kid": key.kid})


def _verification_key(key: JwtKey) -> str | dict[str, str]:
    # As a consumer does: HS256 with the raw secret, RS256/ES256 with the public JWK only.
    jwk = key.public_jwk()
    return key.material() if jwk is None else jwk


def verify_token(keyset: JwtKeyset, token: str) -> dict[str, Any]:
    """The token's claims if a key of ``keyset`` verifies it (signature and exp); else :class:`TokenRejected`.

    The header's kid selects the key. A token without kid is tried against every key of its alg, as a service
    reading ``JWT_SECRET_KEY_NEW`` and ``JWT_SECRET_KEY_OLD`` tries both.
    """
    try:
        header = jwt.get_unverified_header(token)
    except JWTError:
        raise TokenRejected("the token is malformed: not a compact JWS with a JSON header") from None
    kid, alg = header.get("kid"), header.get("alg")
    if kid is None:
        candidates = [key for key in keyset.keys if key.alg == alg]
        if not candidates:
            raise TokenRejected(f"the token has no kid and no key of its alg {_safe_alg(alg)}")
    else:
        candidates = [key for key in keyset.keys if key.kid == kid]
        if not candidates:
            shown = kid if isinstance(kid, str) and re.fullmatch(_KID_PATTERN, kid) else "(not shown)"
            raise TokenRejected(
                f"no key with kid {shown} in the keyset (kids: {', '.join(k.kid for k in keyset.keys)})"
            )
        if candidates[0].alg != alg:
            raise TokenRejected(f"the token's alg {_safe_alg(alg)} is not the alg of key {kid} ({candidates[0].alg})")
    for key in candidates:
        try:
            return jwt.decode(token, _verification_key(key), algorithms=[key.alg])
        except ExpiredSignatureError:
            raise TokenRejected(f"the token signed with key {key.kid} has expired") from None
        except JWTClaimsError as exc:
            raise TokenRejected(f"the token's claims are invalid: {exc}") from None
        except JOSEError:
            continue
    raise TokenRejected(f"the signature does not verify with key {', '.join(k.kid for k in candidates)}")
