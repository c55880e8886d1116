"""The JWT keyset: stored format, validation errors without key material, rotation semantics, sign and verify."""

from __future__ import annotations

import base64
import hmac
import json
import time
import traceback
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jose import jwt

from targets.jwt.keyset import (
    NEW_VARIABLE,
    OLD_VARIABLE,
    JwtKey,
    JwtKeyset,
    KeysetError,
    TokenRejected,
    hs_kid,
    hs_strength_bits,
    new_key,
    public_jwks,
    published,
    rotated,
    sign_token,
    switched,
    thumbprint,
    verify_token,
    without_previous,
)

STRONG = "s3cr3t-" + "A" * 60  # 67 base64 characters: 402 bits of capacity
STRONG_OLD = "0ld-" + "B" * 60
SHORT_HEX = "0123456789abcdef" * 2  # 32 hex digits: 128 bits
PRIVATE_JWK_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "k", "oth"}


def _claims(lifetime: int = 300) -> dict[str, object]:
    now = int(time.time())
    return {"sub": "alice", "iat": now, "exp": now + lifetime}


def _pem(private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


@pytest.fixture(scope="module")
def rs_key() -> JwtKey:
    return new_key("RS256")


@pytest.fixture(scope="module")
def es_key() -> JwtKey:
    return new_key("ES256")


@pytest.fixture(scope="module")
def keys_by_alg(rs_key: JwtKey, es_key: JwtKey) -> Callable[[str], JwtKey]:
    return lambda alg: {"RS256": rs_key, "ES256": es_key}.get(alg) or new_key("HS256")


def _key_doc(kid: str, status: str = "signing", alg: str = "HS256", **material: str) -> dict[str, str]:
    return {"kid": kid, "alg": alg, "status": status, **(material or {"k": STRONG})}


def _doc(*keys: dict[str, str], **extra: object) -> str:
    return json.dumps({"keys": list(keys), **extra})


# --- parsing and validation ---------------------------------------------------------------------------------------

BAD_VALUES = [
    ("not JSON", '{"keys": [', "not valid JSON"),
    ("JSON array", "[1, 2]", "must be a JSON object"),
    ("empty", "   ", "empty"),
    ("text with spaces", f"my secret is {STRONG}", "not JSON and not a bare HS256 secret"),
    ("no signing key", _doc(_key_doc("a", "verify")), "no signing key"),
    ("neither keys nor variables", json.dumps({OLD_VARIABLE: STRONG_OLD}), "no signing key"),
    ("two signing keys", _doc(_key_doc("a"), _key_doc("b", k=STRONG_OLD)), "2 signing keys"),
    ("duplicate kid", _doc(_key_doc("a"), _key_doc("a", "verify", k=STRONG_OLD)), "duplicate kid a"),
    ("short key in keys", _doc(_key_doc("a", k=SHORT_HEX)), "key a: the HS256 secret is shorter than 256 bits"),
    ("short bare secret", "Zm9vYmFy" * 4, "the secret: the HS256 secret is shorter than 256 bits"),
    ("short NEW", json.dumps({NEW_VARIABLE: SHORT_HEX}), f"{NEW_VARIABLE}: the HS256 secret is shorter than 256"),
    ("short OLD", json.dumps({NEW_VARIABLE: STRONG, OLD_VARIABLE: SHORT_HEX}), f"{OLD_VARIABLE}: the HS256 secret"),
    ("OLD equals NEW", json.dumps({NEW_VARIABLE: STRONG, OLD_VARIABLE: STRONG}), f"{OLD_VARIABLE} equals"),
    ("unknown alg", _doc(_key_doc("a", alg="HS512")), "keys[0] (kid a): unknown alg 'HS512'"),
    ("alg none", _doc(_key_doc("a", alg="none")), "unknown alg 'none'"),
    ("keys not a list", json.dumps({"keys": {"a": STRONG}}), "'keys' must be a JSON list"),
    ("key not an object", _doc(STRONG), "keys[0] must be a JSON object"),  # type: ignore[arg-type]
    ("unknown top-level field", _doc(_key_doc("a"), issuer="me"), "unknown field 'issuer'"),
    ("unknown key field", _doc({**_key_doc("a"), "stauts": "x"}), "keys[0] (kid a): stauts: Extra inputs"),
    ("bad status", _doc(_key_doc("a", "active")), "keys[0] (kid a): status: Input should be 'signing' or 'verify'"),
    ("bad kid", _doc(_key_doc("a b")), "keys[0]: kid: String should match pattern"),
    ("HS key with a pem", _doc(_key_doc("a", pem=STRONG)), "key a: an HS256 key holds its secret in 'k'"),
    ("RS key without pem", _doc(_key_doc("a", alg="RS256")), "key a: an RS256 key holds a PEM private key"),
    ("pem not a key", _doc(_key_doc("a", alg="ES256", pem=STRONG)), "key a: pem is not an unencrypted PEM"),
    ("NEW does not match", _doc(_key_doc("a"), **{NEW_VARIABLE: STRONG_OLD}), f"{NEW_VARIABLE} does not match"),
    ("stray OLD", _doc(_key_doc("a"), **{OLD_VARIABLE: STRONG_OLD}), f"{OLD_VARIABLE} does not match"),
    (
        "two verify-only keys",
        _doc(_key_doc("a"), _key_doc("b", "verify", k=STRONG_OLD), _key_doc("c", "verify", k=STRONG_OLD + "c")),
        "2 verify-only keys (b, c)",
    ),
]


@pytest.mark.parametrize(("value", "message"), [case[1:] for case in BAD_VALUES], ids=[c[0] for c in BAD_VALUES])
def test_malformed_keysets_are_refused_with_a_message_that_names_the_problem(value: str, message: str) -> None:
    with pytest.raises(KeysetError) as caught:
        JwtKeyset.from_secret(value)
    assert message in str(caught.value)
    # What a log line with the traceback would show, chained exceptions included.
    logged = "".join(traceback.format_exception(caught.value))
    for material in (STRONG, STRONG_OLD, SHORT_HEX, "Zm9vYmFy"):
        assert material not in logged


def test_a_pem_of_the_wrong_kind_is_refused_without_showing_it(rs_key: JwtKey) -> None:
    small_rsa = _pem(rsa.generate_private_key(65537, 1024))
    wrong_curve = _pem(ec.generate_private_key(ec.SECP384R1()))
    cases = [
        (_key_doc("a", alg="ES256", pem=rs_key.material()), "ES256 needs a P-256"),
        (_key_doc("a", alg="ES256", pem=wrong_curve), "ES256 needs a P-256"),
        (_key_doc("a", alg="RS256", pem=small_rsa), "the RSA key has 1024 bits; RS256 needs at least 2048"),
    ]
    for key_doc, message in cases:
        with pytest.raises(KeysetError, match=message) as caught:
            JwtKeyset.from_secret(_doc(key_doc))
        assert "PRIVATE KEY" not in str(caught.value)


def test_the_stored_value_round_trips_with_the_flat_variables_for_hs256() -> None:
    old, new = new_key("HS256"), new_key("HS256")
    keyset = rotated(JwtKeyset(keys=[old]), new)
    document = json.loads(keyset.to_secret())
    assert document[NEW_VARIABLE] == new.material()
    assert document[OLD_VARIABLE] == old.material()
    assert [(k["kid"], k["status"]) for k in document["keys"]] == [(new.kid, "signing"), (old.kid, "verify")]
    parsed = JwtKeyset.from_secret(keyset.to_secret())
    assert [(k.kid, k.status, k.material()) for k in parsed.keys] == [
        (new.kid, "signing", new.material()),
        (old.kid, "verify", old.material()),
    ]
    assert parsed.keys[0].created_at == new.created_at


def test_a_single_key_keyset_has_no_old_variable() -> None:
    document = json.loads(JwtKeyset(keys=[new_key()]).to_secret())
    assert NEW_VARIABLE in document
    assert OLD_VARIABLE not in document
    assert JwtKeyset.from_secret(json.dumps({**document, OLD_VARIABLE: ""})).previous_key is None


def test_a_legacy_value_with_only_the_two_variables_is_read_with_stable_kids() -> None:
    legacy = json.dumps({NEW_VARIABLE: STRONG, OLD_VARIABLE: STRONG_OLD})
    keyset = JwtKeyset.from_secret(legacy)
    assert keyset.signing_key.material() == STRONG
    assert keyset.previous_key is not None and keyset.previous_key.material() == STRONG_OLD
    assert [k.kid for k in keyset.keys] == [hs_kid(STRONG), hs_kid(STRONG_OLD)]
    assert [k.kid for k in JwtKeyset.from_secret(legacy).keys] == [k.kid for k in keyset.keys]
    # A service that reads the two variables signs without kid; such tokens still verify, with either key.
    for secret in (STRONG, STRONG_OLD):
        assert verify_token(keyset, jwt.encode(_claims(), secret, algorithm="HS256"))["sub"] == "alice"
    # Written back, it is a full keyset that keeps the variables.
    rewritten = json.loads(keyset.to_secret())
    assert (rewritten[NEW_VARIABLE], rewritten[OLD_VARIABLE]) == (STRONG, STRONG_OLD)


def test_a_bare_secret_is_one_signing_key() -> None:
    keyset = JwtKeyset.from_secret(f"{STRONG}\n")
    assert [(k.alg, k.status, k.material()) for k in keyset.keys] == [("HS256", "signing", STRONG)]


def test_hs_kid_is_the_rfc7638_thumbprint_of_the_oct_key() -> None:
    oct_jwk = {"kty": "oct", "k": base64.urlsafe_b64encode(STRONG.encode()).rstrip(b"=").decode()}
    assert hs_kid(STRONG) == thumbprint(oct_jwk)


def test_thumbprint_matches_the_rfc7638_example() -> None:
    # RFC 7638 section 3.1.
    n = (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3"
        "oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdA"
        "ZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur"
        "-kEgU8awapJzKnqDKgw"
    )
    assert thumbprint({"kty": "RSA", "n": n, "e": "AQAB"}) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_repr_and_str_show_no_key_material(rs_key: JwtKey, es_key: JwtKey) -> None:
    hs = new_key("HS256")
    keyset = rotated(JwtKeyset(keys=[rs_key]), hs)
    for text in (repr(keyset), str(keyset), repr(hs), str(es_key), repr(keyset.model_dump())):
        for key in (hs, rs_key, es_key):
            for part in (key.material(), *key.material().splitlines()[1:-1]):  # the PEM body lines too
                assert part not in text
    assert hs.kid in repr(keyset)


# --- key generation -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [0, 128, 248, 255, 300])
def test_new_hs_keys_need_at_least_256_bits_in_whole_bytes(bits: int) -> None:
    with pytest.raises(KeysetError, match=f"at least 256 bits in whole bytes; {bits} bits asked"):
        new_key("HS256", bits)


@pytest.mark.parametrize(("bits", "size"), [(256, 32), (512, 64), (1024, 128)])
def test_new_hs_keys_are_base64url_random_bytes_of_the_asked_size(bits: int, size: int) -> None:
    key = new_key("HS256", bits)
    secret = key.material()
    assert len(base64.urlsafe_b64decode(secret + "=" * (-len(secret) % 4))) == size
    assert key.status == "signing" and key.created_at is not None
    assert key.kid == hs_kid(secret)
    assert new_key("HS256", bits).material() != secret


def test_the_default_hs_key_has_512_bits() -> None:
    secret = new_key().material()
    assert len(base64.urlsafe_b64decode(secret + "==")) == 64


def test_unknown_algorithms_are_refused() -> None:
    with pytest.raises(KeysetError, match="unknown alg 'HS384'; use one of HS256, RS256, ES256"):
        new_key("HS384")


def test_asymmetric_keys_are_rsa_3072_and_p256_with_thumbprint_kids(rs_key: JwtKey, es_key: JwtKey) -> None:
    rsa_private = serialization.load_pem_private_key(rs_key.material().encode(), None)
    ec_private = serialization.load_pem_private_key(es_key.material().encode(), None)
    assert isinstance(rsa_private, rsa.RSAPrivateKey) and rsa_private.key_size == 3072
    assert isinstance(ec_private, ec.EllipticCurvePrivateKey) and isinstance(ec_private.curve, ec.SECP256R1)
    for key in (rs_key, es_key):
        jwk = key.public_jwk()
        assert jwk is not None
        required = {name: jwk[name] for name in jwk if name not in ("kid", "alg", "use")}
        assert key.kid == thumbprint(required)


def test_strength_counts_what_the_characters_can_carry() -> None:
    assert hs_strength_bits("a" * 64) == 256  # hex digits
    assert hs_strength_bits("a" * 63) == 252
    assert hs_strength_bits("z" * 43) == 258  # base64url
    assert hs_strength_bits("é" * 16) == 256  # anything else: its UTF-8 bytes


# --- rotation -----------------------------------------------------------------------------------------------------


def test_rotated_makes_the_new_key_sign_and_keeps_one_old_key_verifying() -> None:
    first, second, third = new_key(), new_key(), new_key()
    once = rotated(JwtKeyset(keys=[first]), second)
    assert [(k.kid, k.status) for k in once.keys] == [(second.kid, "signing"), (first.kid, "verify")]
    twice = rotated(once, third)
    assert [(k.kid, k.status) for k in twice.keys] == [(third.kid, "signing"), (second.kid, "verify")]
    # The input keysets are unchanged.
    assert [(k.kid, k.status) for k in once.keys] == [(second.kid, "signing"), (first.kid, "verify")]


def test_rotating_in_a_key_already_in_the_keyset_is_refused() -> None:
    key = new_key()
    keyset = JwtKeyset(keys=[key])
    with pytest.raises(KeysetError, match=f"duplicate kid {key.kid}"):
        rotated(keyset, key)


def test_without_previous_keeps_only_the_signing_key() -> None:
    old, new = new_key(), new_key()
    final = without_previous(rotated(JwtKeyset(keys=[old]), new))
    assert [(k.kid, k.status) for k in final.keys] == [(new.kid, "signing")]
    assert OLD_VARIABLE not in json.loads(final.to_secret())


def test_old_tokens_verify_while_the_old_key_is_verify_only_and_not_after_it_is_removed() -> None:
    old, new = new_key(), new_key()
    before = JwtKeyset(keys=[old])
    old_token = sign_token(before, _claims())
    during = rotated(before, new)
    assert verify_token(during, old_token)["sub"] == "alice"
    new_token = sign_token(during, _claims())
    assert jwt.get_unverified_header(new_token)["kid"] == new.kid
    after = without_previous(during)
    assert verify_token(after, new_token)["sub"] == "alice"
    with pytest.raises(TokenRejected, match=f"no key with kid {old.kid}"):
        verify_token(after, old_token)


def test_an_algorithm_change_rotates_like_any_other_key(rs_key: JwtKey) -> None:
    hs = new_key()
    keyset = rotated(JwtKeyset(keys=[hs]), rs_key)
    document = json.loads(keyset.to_secret())
    assert NEW_VARIABLE not in document and document[OLD_VARIABLE] == hs.material()
    for kid in (hs.kid, rs_key.kid):
        assert verify_token(keyset, sign_token(keyset, _claims(), kid=kid))["sub"] == "alice"
    assert JwtKeyset.from_secret(keyset.to_secret()).signing_key.kid == rs_key.kid


# --- sign, verify, JWKS -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["HS256", "RS256", "ES256"])
def test_sign_and_verify_round_trip(alg: str, keys_by_alg: Callable[[str], JwtKey]) -> None:
    key = keys_by_alg(alg)
    keyset = JwtKeyset.from_secret(JwtKeyset(keys=[key]).to_secret())
    token = sign_token(keyset, _claims())
    assert jwt.get_unverified_header(token) == {"alg": alg, "typ": "JWT", "kid": key.kid}
    assert verify_token(keyset, token)["sub"] == "alice"
    assert verify_token(keyset, sign_token(key, _claims()))["sub"] == "alice"


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_a_consumer_verifies_with_the_jwks_alone(alg: str, keys_by_alg: Callable[[str], JwtKey]) -> None:
    key = keys_by_alg(alg)
    keyset = JwtKeyset(keys=[key])
    jwks = public_jwks(keyset)
    assert [jwk["kid"] for jwk in jwks["keys"]] == [key.kid]
    assert not PRIVATE_JWK_MEMBERS & set(jwks["keys"][0])
    assert key.material() not in json.dumps(jwks)
    claims = jwt.decode(sign_token(keyset, _claims()), jwks["keys"][0], algorithms=[alg])
    assert claims["sub"] == "alice"


def test_jwks_publishes_every_asymmetric_key_and_no_hs_key(rs_key: JwtKey, es_key: JwtKey) -> None:
    assert public_jwks(JwtKeyset(keys=[new_key()])) == {"keys": []}
    keyset = rotated(JwtKeyset(keys=[es_key]), rs_key)
    published = public_jwks(keyset)["keys"]
    assert [(jwk["kid"], jwk["alg"], jwk["use"]) for jwk in published] == [
        (rs_key.kid, "RS256", "sig"),
        (es_key.kid, "ES256", "sig"),
    ]
    assert all(not PRIVATE_JWK_MEMBERS & set(jwk) for jwk in published)
    assert public_jwks(rotated(JwtKeyset(keys=[es_key]), new_key())) == {"keys": [es_key.public_jwk()]}


def test_sign_token_with_an_unknown_kid_is_refused() -> None:
    with pytest.raises(KeysetError, match="no key with kid nope in the keyset"):
        sign_token(JwtKeyset(keys=[new_key()]), _claims(), kid="nope")


def _rejection(keyset: JwtKeyset, token: str) -> str:
    with pytest.raises(TokenRejected) as caught:
        verify_token(keyset, token)
    message = str(caught.value)
    assert token not in message
    for key in keyset.keys:
        assert key.material() not in message
    return message


def test_bad_tokens_are_rejected_with_a_reason(rs_key: JwtKey) -> None:
    key = new_key()
    keyset = JwtKeyset(keys=[key])
    token = sign_token(keyset, _claims())
    head, body, signature = token.split(".")
    assert "has expired" in _rejection(keyset, sign_token(keyset, _claims(lifetime=-60)))
    forged_signature = ("A" if signature[0] != "A" else "B") + signature[1:]
    assert "does not verify with key" in _rejection(keyset, f"{head}.{body}.{forged_signature}")
    assert "malformed" in _rejection(keyset, "not-a-token")
    other = sign_token(JwtKeyset(keys=[new_key()]), _claims())
    assert "no key with kid" in _rejection(keyset, other)
    # A forged token that reuses a real kid with another secret.
    forged = jwt.encode(_claims(), new_key().material(), algorithm="HS256", headers={"kid": key.kid})
    assert "does not verify with key" in _rejection(keyset, forged)


def test_an_hs256_token_made_with_a_public_rsa_key_is_rejected(rs_key: JwtKey) -> None:
    # The classic algorithm confusion: HMAC over the public key, with the RSA key's kid.
    keyset = JwtKeyset(keys=[rs_key])
    private = serialization.load_pem_private_key(rs_key.material().encode(), None)
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    head = base64.urlsafe_b64encode(json.dumps({"alg": "HS256", "kid": rs_key.kid}).encode()).rstrip(b"=")
    body = base64.urlsafe_b64encode(json.dumps(_claims()).encode()).rstrip(b"=")
    mac = hmac.new(public_pem, head + b"." + body, "sha256").digest()
    token = b".".join([head, body, base64.urlsafe_b64encode(mac).rstrip(b"=")]).decode()
    assert f"the token's alg 'HS256' is not the alg of key {rs_key.kid} (RS256)" in _rejection(keyset, token)


def test_published_then_switched_is_rotated() -> None:
    keyset, key = JwtKeyset(keys=(new_key(),)), new_key()
    first = published(keyset, key)
    assert (first.signing_key.kid, first.previous_key.kid) == (keyset.signing_key.kid, key.kid)
    second = switched(first)
    assert (second.signing_key.kid, second.previous_key.kid) == (key.kid, keyset.signing_key.kid)
    with pytest.raises(KeysetError, match="no verify-only key"):
        switched(keyset)
