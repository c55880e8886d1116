"""The example auth service as a subprocess against a real local store: issue, verify, reload, SIGHUP, bad reloads."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from jose import jwt

from stores import SecretStore, open_store
from targets.http import http_client
from targets.jwt.keyset import JwtKey, JwtKeyset, new_key, rotated, sign_token, verify_token, without_previous
from tests.fixtures.auth_service import RunningService, ServiceDidNotStart

Start = Callable[..., RunningService]


@pytest.fixture
def store_uri(tmp_path: Path) -> str:
    return f"local://{tmp_path / 'store.db'}?secret=jwt"


@pytest.fixture
def first_key() -> JwtKey:
    return new_key("HS256")


@pytest.fixture
def store(store_uri: str, first_key: JwtKey) -> SecretStore:
    store = open_store(store_uri)
    store.create(JwtKeyset(keys=[first_key]).to_secret())
    return store


def _publish(store: SecretStore, value: str) -> None:
    """Make ``value`` CURRENT as a rotation does: stage it, then promote it."""
    rotation_id = str(uuid.uuid4())
    store.stage(value, rotation_id)
    store.promote(rotation_id)


def _issue(service: RunningService, subject: str = "alice") -> str:
    answer = http_client().post(f"{service.base_url}/token", json={"sub": subject}, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()["access_token"]


def _me(service: RunningService, token: str) -> httpx.Response:
    return http_client().get(f"{service.base_url}/me", headers={"Authorization": f"Bearer {token}"}, timeout=10)


def _health(service: RunningService) -> dict[str, object]:
    return http_client().get(f"{service.base_url}/health", timeout=10).json()


def _reload(service: RunningService) -> httpx.Response:
    return http_client().post(f"{service.base_url}/reload", timeout=10)


def _assert_log_clean(service: RunningService, keys: list[JwtKey], tokens: list[str]) -> None:
    log = service.log()
    assert "GET /me" in log  # the log is the service's, and it was written
    for secret in [*(key.material() for key in keys), *tokens]:
        assert secret not in log


@pytest.mark.usefixtures("store")
def test_issues_tokens_and_accepts_only_its_own(auth_service: Start, store_uri: str, first_key: JwtKey) -> None:
    service = auth_service(store_uri, token_lifetime=120)
    health = _health(service)
    assert health["kids"] == [first_key.kid] and health["signing_kid"] == first_key.kid
    assert set(health) == {"kids", "signing_kid", "loaded_at"}

    token = _issue(service)
    assert jwt.get_unverified_header(token)["kid"] == first_key.kid
    answer = _me(service, token)
    assert answer.status_code == 200
    claims = answer.json()["claims"]
    assert claims["sub"] == "alice"
    assert 115 <= claims["exp"] - time.time() <= 121
    # The stored format means the same to the service and to the runbook's verification.
    keyset = JwtKeyset(keys=[first_key])
    assert verify_token(keyset, token)["sub"] == "alice"
    runbook_token = sign_token(keyset, {"sub": "bob", "exp": int(time.time()) + 60})
    assert _me(service, runbook_token).json()["claims"]["sub"] == "bob"

    stranger = sign_token(JwtKeyset(keys=[new_key()]), {"sub": "mallory", "exp": int(time.time()) + 60})
    forged = jwt.encode({"sub": "mallory"}, new_key().material(), algorithm="HS256", headers={"kid": first_key.kid})
    expired = sign_token(keyset, {"sub": "alice", "exp": int(time.time()) - 10})
    for bad, reason in [
        (stranger, "unknown key id"),
        (forged, "signature"),
        (expired, "expired"),
        ("x.y", "malformed"),
    ]:
        answer = _me(service, bad)
        assert answer.status_code == 401
        assert reason in answer.json()["error"]
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    assert http_client().get(f"{service.base_url}/me", timeout=10).status_code == 401
    assert http_client().post(f"{service.base_url}/token", json={"user": "x"}, timeout=10).status_code == 400
    assert http_client().get(f"{service.base_url}/.well-known/jwks.json", timeout=10).json() == {"keys": []}
    _assert_log_clean(service, [first_key], [token, runbook_token, forged])


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_asymmetric_keysets_publish_a_jwks_that_verifies_issued_tokens(
    auth_service: Start, store_uri: str, alg: str
) -> None:
    key = new_key(alg)
    open_store(store_uri).create(JwtKeyset(keys=[key]).to_secret())
    service = auth_service(store_uri)
    token = _issue(service)
    assert jwt.get_unverified_header(token) == {"alg": alg, "typ": "JWT", "kid": key.kid}
    jwks = http_client().get(f"{service.base_url}/.well-known/jwks.json", timeout=10).json()
    assert [jwk["kid"] for jwk in jwks["keys"]] == [key.kid]
    assert not {"d", "p", "q", "dp", "dq", "qi"} & set(jwks["keys"][0])
    assert jwt.decode(token, jwks["keys"][0], algorithms=[alg])["sub"] == "alice"
    assert _me(service, token).status_code == 200
    _assert_log_clean(service, [key], [token])


def test_reload_follows_the_rotation_old_tokens_verify_until_the_old_key_is_removed(
    auth_service: Start, store: SecretStore, store_uri: str, first_key: JwtKey
) -> None:
    service = auth_service(store_uri)
    old_token = _issue(service)
    second = new_key()
    during = rotated(JwtKeyset.from_secret(store.read()), second)
    _publish(store, during.to_secret())
    assert _me(service, _issue(service)).status_code == 200
    assert jwt.get_unverified_header(_issue(service))["kid"] == first_key.kid  # nothing changes before the reload

    answer = _reload(service)
    assert answer.status_code == 200
    assert answer.json()["kids"] == [second.kid, first_key.kid]
    assert answer.json()["signing_kid"] == second.kid
    new_token = _issue(service)
    assert jwt.get_unverified_header(new_token)["kid"] == second.kid
    assert _me(service, old_token).status_code == 200
    assert _me(service, new_token).status_code == 200

    _publish(store, without_previous(during).to_secret())
    assert _reload(service).json()["kids"] == [second.kid]
    rejected = _me(service, old_token)
    assert rejected.status_code == 401 and "unknown key id" in rejected.json()["error"]
    assert _me(service, new_token).status_code == 200
    _assert_log_clean(service, [first_key, second], [old_token, new_token])


def test_sighup_reloads_the_keyset(auth_service: Start, store: SecretStore, store_uri: str) -> None:
    service = auth_service(store_uri)
    second = new_key()
    _publish(store, rotated(JwtKeyset.from_secret(store.read()), second).to_secret())
    os.kill(service.pid, signal.SIGHUP)
    deadline = time.monotonic() + 10
    while _health(service)["signing_kid"] != second.kid:
        assert time.monotonic() < deadline, "SIGHUP did not reload the keyset within 10 s"
        time.sleep(0.05)
    assert service.process.poll() is None
    assert "keyset reloaded" in service.log()


def test_a_failed_reload_keeps_serving_the_previous_keyset(
    auth_service: Start, store: SecretStore, store_uri: str, first_key: JwtKey
) -> None:
    service = auth_service(store_uri)
    token = _issue(service)
    before = _health(service)
    leaked = new_key().material()
    bad_values = [
        json.dumps({"keys": [{"kid": "only-verify", "alg": "HS256", "status": "verify", "k": leaked}]}),
        f'{{"keys": [{{"kid": "x", "k": "{leaked}"',
        json.dumps({"keys": [{"kid": "rsa", "alg": "RS256", "status": "signing", "pem": leaked}]}),
    ]
    for bad in bad_values:
        _publish(store, bad)
        answer = _reload(service)
        assert answer.status_code == 500
        message = answer.json()["error"]
        assert message.startswith("reload failed, still serving the previous keyset: cannot load the keyset from")
        assert leaked not in message
        assert _health(service) == before
        assert _me(service, token).status_code == 200
        assert jwt.get_unverified_header(_issue(service))["kid"] == first_key.kid
    os.kill(service.pid, signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "reload failed" not in service.log().split("POST /reload 500")[-1]:
        assert time.monotonic() < deadline, "the failed SIGHUP reload was not logged within 10 s"
        time.sleep(0.05)
    assert service.process.poll() is None and _health(service) == before

    good = new_key()
    _publish(store, rotated(JwtKeyset(keys=[first_key]), good).to_secret())
    assert _reload(service).json()["signing_kid"] == good.kid
    assert _me(service, token).status_code == 200
    _assert_log_clean(service, [first_key, good], [token, leaked])


def test_requests_in_flight_during_reloads_are_never_rejected(
    auth_service: Start, store: SecretStore, store_uri: str, first_key: JwtKey, record_property
) -> None:
    service = auth_service(store_uri)
    token = _issue(service)
    stop = threading.Event()
    calls: list[int] = []
    rejections: list[int] = []

    def client() -> None:
        with httpx.Client(base_url=service.base_url, timeout=10) as http:
            while not stop.is_set():
                status = http.get("/me", headers={"Authorization": f"Bearer {token}"}).status_code
                calls.append(status)
                if status != 200:
                    rejections.append(status)

    threads = [threading.Thread(target=client) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        # Ten times: rotate to a new key (the first one verify-only), then back to the first key alone.
        for _ in range(10):
            keyset = rotated(JwtKeyset.from_secret(store.read()), new_key())
            _publish(store, keyset.to_secret())
            assert _reload(service).status_code == 200
            _publish(store, JwtKeyset(keys=[first_key.model_copy(update={"status": "signing"})]).to_secret())
            assert _reload(service).status_code == 200
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    record_property("calls", len(calls))
    record_property("rejected", len(rejections))
    assert len(calls) >= 20
    assert rejections == []


def test_a_missing_secret_stops_the_service_at_start_with_a_clear_message(auth_service: Start, tmp_path: Path) -> None:
    uri = f"local://{tmp_path / 'empty.db'}?secret=nothing-here"
    with pytest.raises(ServiceDidNotStart) as caught:
        auth_service(uri)
    assert "exited with status 2" in str(caught.value)
    assert f"cannot load the keyset from {uri}" in str(caught.value)
