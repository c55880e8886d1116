"""Steps of the JWT signing-key runbook: build the next keyset, and check what consumers accept.

Verification mints test tokens with the keys in the store and presents them to each consumer's ``verify_url``
as a client would (``Authorization: Bearer ...``): a 2xx answer means accepted, 401 or 403 means rejected.
Tokens and keys stay inside the task.
"""

from __future__ import annotations

import time
import uuid

import httpx
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from errors import CheckFailed
from redaction import register_secret
from stores import Stage, open_store
from stores.errors import VersionNotFound
from targets.consumers import Consumer
from targets.http import http_client
from targets.jwt.keyset import JwtKeyset, KeysetError, sign_token
from targets.jwt.rollover import final_keyset, parse_keyset, switched_keyset
from tasks import retry_if_transient
from tasks.secrets import derived_version_id, stage_and_promote, unpromote


class VerificationFailed(CheckFailed):
    """A consumer did not accept or reject a token as the runbook expects."""


class Kids(BaseModel):
    """The key ids of a keyset: public identifiers, safe to log and record."""

    signing: str
    verify_only: list[str]


def _kids(keyset: JwtKeyset) -> Kids:
    return Kids(signing=keyset.signing_key.kid, verify_only=[k.kid for k in keyset.keys if k.status == "verify"])


class NewKey(BaseModel):
    """The key a rotation brings in and the one it retires: public identifiers."""

    new: str
    old: str


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2, retry_condition_fn=retry_if_transient)
def inspect_current_keyset(secret: str) -> Kids:
    """Check that the CURRENT keyset is well formed before anything changes; return its key ids."""
    return _kids(parse_keyset(open_store(secret).read(Stage.CURRENT), f"the current keyset of {secret}"))


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2, retry_condition_fn=retry_if_transient)
def inspect_new_key(secret: str, rotation_id: str) -> NewKey:
    """Which key rotation ``rotation_id`` staged beside the current signing key."""
    store = open_store(secret)
    current = parse_keyset(store.read(Stage.CURRENT), f"the current keyset of {secret}")
    staged = parse_keyset(store.read_version(rotation_id), f"version {rotation_id} of {secret}")
    added = [k.kid for k in staged.keys if k.kid not in {c.kid for c in current.keys}]
    if len(added) != 1:
        raise KeysetError(f"version {rotation_id} of {secret} does not add exactly one key to the current keyset")
    return NewKey(new=added[0], old=current.signing_key.kid)


def _find_key_keyset(secret: str, kid: str) -> JwtKeyset:
    store = open_store(secret)
    for stage in (Stage.CURRENT, Stage.PREVIOUS):
        try:
            keyset = parse_keyset(store.read(stage), f"the {stage} keyset of {secret}")
        except VersionNotFound:
            continue
        if any(k.kid == kid for k in keyset.keys):
            return keyset
    raise VerificationFailed(f"key {kid} is in neither the CURRENT nor the PREVIOUS keyset of {secret}")


def _accepted(consumer: Consumer, token: str) -> bool:
    assert consumer.verify_url is not None
    try:
        response = http_client().get(consumer.verify_url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    except httpx.HTTPError as exc:
        raise ConnectionError(f"{consumer.name} at {consumer.verify_url}: {type(exc).__name__}") from None
    if response.is_success:
        return True
    if response.status_code in (401, 403):
        return False
    raise VerificationFailed(f"{consumer.name} answered HTTP {response.status_code} at {consumer.verify_url}")


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[1, 3])
def check_tokens(secret: str, consumers: list[Consumer], accepted: list[str], rejected: list[str]) -> dict[str, int]:
    """Present a token signed with each key id in ``accepted`` (must pass) and ``rejected`` (must fail) to every
    consumer with a ``verify_url``. Old-key tokens carry an issue time from before the rotation. Returns counts."""
    logger = get_run_logger()
    now = int(time.time())
    checked = 0
    for kid in [*accepted, *rejected]:
        keyset = _find_key_keyset(secret, kid)
        claims = {"sub": "rotation-check", "iat": now - 60, "exp": now + 300, "jti": uuid.uuid4().hex}
        token = register_secret(sign_token(keyset, claims, kid=kid))
        for consumer in consumers:
            if consumer.verify_url is None:
                continue
            want = kid in accepted
            if _accepted(consumer, token) != want:
                raise VerificationFailed(
                    f"{consumer.name} {'rejected' if want else 'accepted'} a token signed with key {kid}; "
                    f"it should have {'accepted' if want else 'rejected'} it"
                )
            checked += 1
            logger.info("%s %s key %s as expected", consumer.name, "accepts" if want else "rejects", kid)
    return {"checks": checked}


_FORWARD = {"retries": 3, "retry_delay_seconds": [1, 5, 15], "retry_condition_fn": retry_if_transient}


@task(cache_policy=NO_CACHE, **_FORWARD)
def switch_signing_key(secret: str, rotation_id: str) -> str:
    """Make CURRENT the keyset in which the published key signs and the old one verifies. Idempotent."""
    return stage_and_promote(secret, derived_version_id(rotation_id, "switch-signing-key"), switched_keyset)


@task(cache_policy=NO_CACHE, **_FORWARD)
def undo_switch_signing_key(secret: str, rotation_id: str, previous_version: str | None) -> None:
    """Undo :func:`switch_signing_key`: the keyset with the published key verify-only is CURRENT again."""
    unpromote(secret, derived_version_id(rotation_id, "switch-signing-key"), previous_version)


@task(cache_policy=NO_CACHE, **_FORWARD)
def drop_previous_key(secret: str, rotation_id: str) -> str:
    """Make CURRENT a keyset with the signing key alone; the dual-key keyset becomes PREVIOUS. Idempotent."""
    return stage_and_promote(secret, derived_version_id(rotation_id, "retire-previous-key"), final_keyset)
