"""The aws store against a real moto_server: the labels AWS's own tools and applications see, and its failures.

What applications and AWS's rotation functions observe is checked with plain boto3 calls, not through the store.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import boto3
import pytest

from stores import SecretStore, Stage, open_store
from stores.errors import (
    InvalidRotationId,
    InvalidStoreURI,
    SecretExists,
    SecretNotFound,
    StagingConflict,
    StoreUnavailable,
    VersionNotFound,
)
from tests.fixtures.ports import free_port
from tests.leaks import canary, error_text


@pytest.fixture
def aws(moto_server: str) -> Any:
    """A plain boto3 client, as an application or an AWS rotation function would hold it."""
    return boto3.client("secretsmanager", endpoint_url=moto_server, region_name="us-east-1")


def labels(aws: Any, store: SecretStore) -> dict[str, list[str]]:
    """Version id -> AWS staging labels, as ``describe_secret`` reports them.

    Versions without a label are left out as AWS leaves them out (moto lists them with an empty list).
    """
    answer = aws.describe_secret(SecretId=store.uri.name)["VersionIdsToStages"]
    return {version: sorted(stages) for version, stages in answer.items() if stages}


def store_at(endpoint: str, name: str | None = None) -> SecretStore:
    name = name or f"aws-test/{uuid.uuid4().hex[:12]}"
    return open_store(f"aws://{name}?{urlencode({'region': 'us-east-1', 'endpoint_url': endpoint})}")


def test_promote_leaves_exactly_current_and_previous_labels(aws: Any, aws_store_factory: Callable[[], SecretStore]):
    store = aws_store_factory()
    first = store.create(canary())
    rotation = str(uuid.uuid4())
    store.stage(canary(), rotation)
    assert labels(aws, store) == {first: ["AWSCURRENT"], rotation: ["AWSPENDING"]}
    store.promote(rotation)
    assert labels(aws, store) == {rotation: ["AWSCURRENT"], first: ["AWSPREVIOUS"]}


def test_applications_reading_awscurrent_see_the_promoted_value_only_after_promote(
    aws: Any, aws_store_factory: Callable[[], SecretStore]
):
    store = aws_store_factory()
    old, new = canary(), canary()
    store.create(old)
    rotation = str(uuid.uuid4())
    store.stage(new, rotation)

    def current() -> str:
        return aws.get_secret_value(SecretId=store.uri.name, VersionStage="AWSCURRENT")["SecretString"]

    assert current() == old
    # Where AWS's rotation functions look for the staged value.
    assert aws.get_secret_value(SecretId=store.uri.name, VersionStage="AWSPENDING")["SecretString"] == new
    assert aws.get_secret_value(SecretId=store.uri.name, VersionId=rotation)["SecretString"] == new
    store.promote(rotation)
    assert current() == new
    assert aws.get_secret_value(SecretId=store.uri.name, VersionStage="AWSPREVIOUS")["SecretString"] == old


def test_a_version_staged_by_an_aws_rotation_function_is_promoted_by_the_store(
    aws: Any, aws_store_factory: Callable[[], SecretStore]
):
    store = aws_store_factory()
    first = store.create(canary())
    token, new = str(uuid.uuid4()), canary()
    # What createSecret in AWS's rotation functions does.
    aws.put_secret_value(
        SecretId=store.uri.name, ClientRequestToken=token, SecretString=new, VersionStages=["AWSPENDING"]
    )
    assert store.describe().version_at(Stage.PENDING) == token
    assert store.stage(canary(), token) == token
    store.promote(token)
    assert store.read() == new
    assert labels(aws, store) == {token: ["AWSCURRENT"], first: ["AWSPREVIOUS"]}


def test_promote_finishes_a_promotion_interrupted_before_pending_was_removed(
    aws: Any, aws_store_factory: Callable[[], SecretStore]
):
    store = aws_store_factory()
    first = store.create(canary())
    rotation = str(uuid.uuid4())
    store.stage(canary(), rotation)
    # A worker killed between the two label moves of promote (AWS's known "AWSPENDING left on current").
    aws.update_secret_version_stage(
        SecretId=store.uri.name, VersionStage="AWSCURRENT", MoveToVersionId=rotation, RemoveFromVersionId=first
    )
    assert labels(aws, store) == {rotation: ["AWSCURRENT", "AWSPENDING"], first: ["AWSPREVIOUS"]}
    store.promote(rotation)
    assert labels(aws, store) == {rotation: ["AWSCURRENT"], first: ["AWSPREVIOUS"]}


def test_a_rotation_starts_where_an_aws_rotation_function_finished(
    aws: Any, aws_store_factory: Callable[[], SecretStore]
):
    store = aws_store_factory()
    first = store.create(canary())
    token = str(uuid.uuid4())
    # createSecret, then finishSecret, as AWS's rotation functions do them: AWSPENDING stays on the new AWSCURRENT.
    aws.put_secret_value(
        SecretId=store.uri.name, ClientRequestToken=token, SecretString=canary(), VersionStages=["AWSPENDING"]
    )
    aws.update_secret_version_stage(
        SecretId=store.uri.name, VersionStage="AWSCURRENT", MoveToVersionId=token, RemoveFromVersionId=first
    )
    assert labels(aws, store) == {token: ["AWSCURRENT", "AWSPENDING"], first: ["AWSPREVIOUS"]}
    rotation, value = str(uuid.uuid4()), canary()
    store.stage(value, rotation)
    store.promote(rotation)
    assert labels(aws, store) == {rotation: ["AWSCURRENT"], token: ["AWSPREVIOUS"]}
    assert store.read() == value


def test_revert_finishes_a_revert_interrupted_between_its_label_moves(
    aws: Any, aws_store_factory: Callable[[], SecretStore]
):
    store = aws_store_factory()
    oldest = store.create(canary())
    middle_value = canary()
    middle = store.stage(middle_value, str(uuid.uuid4()))
    store.promote(middle)
    rotation = str(uuid.uuid4())
    store.stage(canary(), rotation)
    store.promote(rotation)
    # Killed after CURRENT moved back: AWS handed AWSPREVIOUS to the reverted version.
    aws.update_secret_version_stage(
        SecretId=store.uri.name, VersionStage="AWSCURRENT", MoveToVersionId=middle, RemoveFromVersionId=rotation
    )
    assert labels(aws, store) == {middle: ["AWSCURRENT"], rotation: ["AWSPREVIOUS"]}
    store.revert(rotation, oldest)
    assert labels(aws, store) == {middle: ["AWSCURRENT"], oldest: ["AWSPREVIOUS"]}
    assert store.read() == middle_value


def test_a_secret_named_by_its_arn_is_the_same_secret(moto_server: str, aws: Any):
    by_name = store_at(moto_server)
    value = canary()
    by_name.create(value)
    arn = aws.describe_secret(SecretId=by_name.uri.name)["ARN"]
    assert store_at(moto_server, arn).read() == value


def test_an_unreachable_endpoint_fails_fast_and_names_the_endpoint():
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    store = store_at(endpoint)
    value = canary()
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as error:
        store.stage(value, str(uuid.uuid4()))
    assert time.monotonic() - started < 5
    assert endpoint in str(error.value)
    assert value not in error_text(error.value)


def test_a_missing_secret_is_named(moto_server: str):
    store = store_at(moto_server)
    with pytest.raises(SecretNotFound) as error:
        store.read()
    assert store.uri.name in str(error.value)
    assert "create" in str(error.value)


def test_a_rotation_id_aws_cannot_use_is_refused_and_changes_nothing(
    aws: Any, aws_store_factory: Callable[[], SecretStore]
):
    store = aws_store_factory()
    first = store.create(canary())
    value = canary()
    for bad in ("short", "x" * 65):
        with pytest.raises(InvalidRotationId) as error:
            store.stage(value, bad)
        assert "32 to 64 characters" in str(error.value)
        assert value not in error_text(error.value)
    assert labels(aws, store) == {first: ["AWSCURRENT"]}


def test_restaging_a_discarded_rotation_is_refused(aws: Any, aws_store_factory: Callable[[], SecretStore]):
    store = aws_store_factory()
    first = store.create(canary())
    rotation = str(uuid.uuid4())
    store.stage(canary(), rotation)
    store.discard(rotation)
    value = canary()
    with pytest.raises(StagingConflict) as error:
        store.stage(value, rotation)
    assert "new rotation" in str(error.value)
    assert value not in error_text(error.value)
    assert labels(aws, store) == {first: ["AWSCURRENT"]}


def test_no_error_message_contains_the_value(moto_server: str, aws: Any):
    store = store_at(moto_server)
    value = canary()
    store.create(value)
    rotation = str(uuid.uuid4())
    store.stage(value, rotation)
    failures: list[tuple[type[Exception], Callable[[], object]]] = [
        (SecretExists, lambda: store.create(value)),
        (StagingConflict, lambda: store.stage(value, str(uuid.uuid4()))),
        (VersionNotFound, lambda: store.read(Stage.PREVIOUS)),
        (StagingConflict, lambda: store.promote(str(uuid.uuid4()))),
        (SecretNotFound, lambda: store_at(moto_server).stage(value, str(uuid.uuid4()))),
    ]
    for expected, failure in failures:
        with pytest.raises(expected) as error:
            failure()
        assert value not in error_text(error.value)


def test_bad_uris_are_refused_with_what_to_do(monkeypatch: pytest.MonkeyPatch, tmp_path):
    with pytest.raises(InvalidStoreURI, match=r"unknown option.*regoin.*accepts region=REGION, endpoint_url=URL"):
        open_store("aws://name?regoin=us-east-1")
    with pytest.raises(InvalidStoreURI, match="not a URL"):
        open_store("aws://name?region=us-east-1&endpoint_url=localhost:4566")
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    with pytest.raises(InvalidStoreURI, match=r"no AWS region .* add \?region=REGION"):
        open_store("aws://name").read()


def test_a_dated_description_dates_every_version_with_one_call_more(moto_server: str):
    """Secrets Manager's DescribeSecret gives no date per version: ``describe(dated=True)`` (the posture report's)
    asks ListSecretVersionIds once more; a rotation's ``describe()`` does not."""
    store = store_at(moto_server)
    store.create("first value of a dated secret")
    store.stage("second value of a dated secret", str(uuid.uuid4()))
    calls: list[str] = []
    store._client.meta.events.register(
        "before-call.secrets-manager", lambda **kw: calls.append(kw["model"].name), unique_id="dated-calls"
    )
    try:
        assert all(v.created_at is None for v in store.describe().versions)
        assert "ListSecretVersionIds" not in calls
        dated = store.describe(dated=True).versions
        assert calls.count("ListSecretVersionIds") == 1
    finally:
        store._client.meta.events.unregister("before-call.secrets-manager", unique_id="dated-calls")
    now = datetime.now(UTC)
    assert len(dated) == 2
    assert all(v.created_at is not None and abs((now - v.created_at).total_seconds()) < 300 for v in dated)


def test_a_reader_not_allowed_to_list_versions_gets_them_undated(aws_denied_store) -> None:
    reader, _ = aws_denied_store()  # allowed DescribeSecret and GetSecretValue only
    (version,) = reader.describe(dated=True).versions
    assert version.created_at is None and Stage.CURRENT in version.stages
