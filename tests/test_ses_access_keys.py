"""Amazon SES SMTP credentials from IAM access keys: the password derivation, and the key steps on moto_server's IAM.

The SMTP side of SES is played by an aiosmtpd server: the test tells it which (access key id, SMTP password) pairs
SES would accept, as SES does once IAM has the key. Steps are called as plain functions, without a flow.
"""

from __future__ import annotations

import base64
import json
import logging
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

import redaction
from errors import Conflict, NotFound, Refused
from stores import SecretStore, Stage
from targets.ses.access_keys import AccessKeyLimit, IamUser, IamUserNotFound
from targets.ses.password import signing_key, smtp_password
from tasks.smtp import (
    create_ses_access_key,
    deactivate_old_access_key,
    delete_created_access_key,
    delete_old_access_key,
    inspect_smtp_secret,
    smtp_login_accepted,
    smtp_login_refused,
)
from tests.fixtures.smtp_server import SmtpServer
from tests.leaks import error_text

REGION = "eu-west-1"
# AWS's published Signature Version 4 example ("Examples of how to derive a signing key for Signature Version 4",
# AWS General Reference): this secret key, 20120215, us-east-1, iam give this kSigning.
AWS_EXAMPLE_SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
AWS_EXAMPLE_SIGNING_KEY = "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"


def test_the_key_chain_gives_aws_published_signing_key() -> None:
    assert signing_key(AWS_EXAMPLE_SECRET, "20120215", "us-east-1", "iam").hex() == AWS_EXAMPLE_SIGNING_KEY


@pytest.mark.parametrize("region", ["us-east-1", "eu-west-1", "ap-southeast-2", "us-gov-west-1"])
def test_the_smtp_password_is_the_sigv4_signature_of_sendrawemail(region: str) -> None:
    # botocore's own SigV4 signer, given SES's fixed date and message, is an independent implementation of the chain.
    signer = SigV4Auth(Credentials("AKIDEXAMPLE", AWS_EXAMPLE_SECRET), "ses", region)
    request = AWSRequest(method="POST", url=f"https://email-smtp.{region}.amazonaws.com")
    request.context["timestamp"] = "11111111T000000Z"
    expected = base64.b64encode(bytes([0x04]) + bytes.fromhex(signer.signature("SendRawEmail", request))).decode()
    password = smtp_password(AWS_EXAMPLE_SECRET, region)
    assert password == expected
    decoded = base64.b64decode(password)
    assert (len(password), len(decoded), decoded[0]) == (44, 33, 0x04)


def test_a_password_is_for_one_region() -> None:
    assert smtp_password(AWS_EXAMPLE_SECRET, "eu-west-1") != smtp_password(AWS_EXAMPLE_SECRET, "eu-west-2")


@pytest.fixture
def iam(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """An IAM client on moto_server; the code under test reaches it through boto3's standard endpoint variable."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_IAM", moto_server)
    return boto3.client("iam", region_name=REGION)


@dataclass
class SesSecret:
    store: SecretStore
    server: SmtpServer
    iam_user: str
    old_key: str
    old_version: str

    @property
    def uri(self) -> str:
        return self.store.uri.display

    def keys(self, iam: Any) -> dict[str, str]:
        listed = iam.list_access_keys(UserName=self.iam_user)["AccessKeyMetadata"]
        return {k["AccessKeyId"]: k["Status"] for k in listed}

    def ses_accepts(self, version_id: str) -> str:
        """SES knows the key of ``version_id`` (as it does seconds after IAM created it); returns its key id."""
        staged = json.loads(self.store.read_version(version_id))
        self.server.add_password(staged["username"], staged["password"])
        return staged["username"]


@pytest.fixture
def ses_secret(
    iam: Any, smtp_servers: Callable[..., SmtpServer], local_store_factory: Callable[[], SecretStore]
) -> Iterator[SesSecret]:
    user = f"mailer-{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=user)
    key = iam.create_access_key(UserName=user)["AccessKey"]
    password = smtp_password(key["SecretAccessKey"], REGION)
    server = smtp_servers("starttls")
    server.set_password(key["AccessKeyId"], password)
    store = local_store_factory()
    version = store.create(server.secret(key["AccessKeyId"], password, ses={"iam_user": user, "region": REGION}))
    yield SesSecret(store, server, user, key["AccessKeyId"], version)


def test_ses_rotation_steps(iam: Any, ses_secret: SesSecret, caplog: pytest.LogCaptureFixture) -> None:
    s = ses_secret
    caplog.set_level(logging.DEBUG)  # botocore's debug log shows response bodies: nothing secret may be in them
    known_before = set(redaction._secrets)

    plan = inspect_smtp_secret.fn(s.uri)
    assert (plan.path, plan.iam_user, plan.region, plan.username) == ("ses", s.iam_user, REGION, s.old_key)
    assert [(k.access_key_id, k.status) for k in plan.access_keys] == [(s.old_key, "Active")]

    rotation_id = str(uuid.uuid4())
    created = create_ses_access_key.fn(s.uri, rotation_id)
    assert created.created and created.region == REGION
    assert s.keys(iam) == {s.old_key: "Active", created.access_key_id: "Active"}
    staged = json.loads(s.store.read_version(rotation_id))
    assert staged["username"] == created.access_key_id and staged["ses"] == {"iam_user": s.iam_user, "region": REGION}
    assert base64.b64decode(staged["password"])[0] == 0x04
    assert s.store.describe().version_at(Stage.PENDING) == rotation_id
    assert iam.list_user_tags(UserName=s.iam_user)["Tags"] == []  # the marker lives only until the value is stored
    again = create_ses_access_key.fn(s.uri, rotation_id)  # a retried or resumed step changes nothing
    assert (again.created, again.access_key_id, again.staged_fingerprint) == (
        False,
        created.access_key_id,
        created.staged_fingerprint,
    )

    with pytest.raises(Refused, match="is not CURRENT"):
        deactivate_old_access_key.fn(s.uri, rotation_id, s.old_version)  # never before the promotion
    s.ses_accepts(rotation_id)
    assert smtp_login_accepted.fn(s.uri, rotation_id).accepted
    s.store.promote(rotation_id)

    with pytest.raises(Refused, match="still active: deactivate it"):
        delete_old_access_key.fn(s.uri, rotation_id, s.old_version)
    assert deactivate_old_access_key.fn(s.uri, rotation_id, s.old_version).changed
    assert not deactivate_old_access_key.fn(s.uri, rotation_id, s.old_version).changed
    assert s.keys(iam) == {s.old_key: "Inactive", created.access_key_id: "Active"}
    s.server.remove_password(s.old_key, json.loads(s.store.read_version(s.old_version))["password"])  # as SES does
    assert not smtp_login_refused.fn(s.uri, s.old_version).accepted
    assert delete_old_access_key.fn(s.uri, rotation_id, s.old_version).changed
    assert not delete_old_access_key.fn(s.uri, rotation_id, s.old_version).changed
    assert s.keys(iam) == {created.access_key_id: "Active"}

    new_values = {v for v in redaction._secrets - known_before if len(v) >= 20}
    assert len(new_values) >= 2  # the secret access key and the SMTP password derived from it, at least
    logged = caplog.text + "".join(r.getMessage() for r in caplog.records)
    assert "CreateAccessKeyResponse" in logged  # botocore did log the response body...
    assert [v for v in new_values if v in logged] == []  # ...without the secret in it


def test_a_third_key_is_refused_before_any_change(iam: Any, ses_secret: SesSecret) -> None:
    s = ses_secret
    other = iam.create_access_key(UserName=s.iam_user)["AccessKey"]["AccessKeyId"]
    before = s.keys(iam)
    with pytest.raises(AccessKeyLimit, match="already has 2 access keys, the most IAM allows") as caught:
        inspect_smtp_secret.fn(s.uri)
    assert f"{s.old_key} (Active" in str(caught.value) and "the key the secret uses" in str(caught.value)
    assert f"Delete {other} once no consumer uses it" in str(caught.value)
    assert isinstance(caught.value, Conflict)
    with pytest.raises(AccessKeyLimit, match="nothing was changed"):
        create_ses_access_key.fn(s.uri, str(uuid.uuid4()))
    assert s.keys(iam) == before
    assert [v.stages for v in s.store.describe().versions] == [(Stage.CURRENT,)]


def test_rollback_deletes_the_created_key(iam: Any, ses_secret: SesSecret) -> None:
    s = ses_secret
    rotation_id = str(uuid.uuid4())
    created = create_ses_access_key.fn(s.uri, rotation_id)
    s.store.promote(rotation_id)
    with pytest.raises(Refused, match="revert the secret before deleting its access key"):
        delete_created_access_key.fn(s.uri, rotation_id)
    s.store.revert(rotation_id, None)
    undone = delete_created_access_key.fn(s.uri, rotation_id)
    assert (undone.access_key_id, undone.changed) == (created.access_key_id, True)
    assert s.keys(iam) == {s.old_key: "Active"}
    assert s.store.describe().version_at(Stage.CURRENT) == s.old_version
    assert not delete_created_access_key.fn(s.uri, rotation_id).changed  # idempotent


def test_a_key_created_by_a_run_that_died_before_staging_is_replaced(iam: Any, ses_secret: SesSecret) -> None:
    s = ses_secret
    rotation_id = str(uuid.uuid4())
    # The run created the key, marked it, and died before its SMTP password reached the store.
    lost = iam.create_access_key(UserName=s.iam_user)["AccessKey"]["AccessKeyId"]
    IamUser(s.iam_user, REGION).mark(rotation_id, lost)
    # Rolling back that run deletes the key it cannot name from the store...
    assert delete_created_access_key.fn(s.uri, rotation_id).access_key_id == lost
    assert s.keys(iam) == {s.old_key: "Active"}
    # ...and resuming it instead replaces the key with one whose password is stored.
    lost = iam.create_access_key(UserName=s.iam_user)["AccessKey"]["AccessKeyId"]
    IamUser(s.iam_user, REGION).mark(rotation_id, lost)
    created = create_ses_access_key.fn(s.uri, rotation_id)
    assert created.created and created.access_key_id != lost
    assert s.keys(iam) == {s.old_key: "Active", created.access_key_id: "Active"}


def test_an_unknown_iam_user_is_named(iam: Any, ses_secret: SesSecret) -> None:
    s = ses_secret
    value = json.loads(s.store.read())
    rotation_id = str(uuid.uuid4())
    s.store.stage(json.dumps({**value, "ses": {"iam_user": "nobody", "region": REGION}}), rotation_id)
    s.store.promote(rotation_id)
    with pytest.raises(IamUserNotFound, match=r"IAM user 'nobody' does not exist; fix ses\.iam_user") as caught:
        inspect_smtp_secret.fn(s.uri)
    assert isinstance(caught.value, NotFound)
    assert value["password"] not in error_text(caught.value)
