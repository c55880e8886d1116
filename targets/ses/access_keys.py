"""The access keys of one IAM user: list them, create the second one, deactivate and delete one.

IAM gives a user at most two access keys, which is what makes an SES credential rotation possible without a gap:
the new key is created beside the one in use, and the old one is revoked only after every consumer moved. A third
key is refused here before IAM is asked (:class:`AccessKeyLimit`), with the two keys and what to do; nothing has
changed when it is raised.

A key's secret is returned by IAM once, by ``CreateAccessKey``. Until the caller has stored what it derives from
it, the key is marked with a tag on the user (``secret-rotation:<rotation id>`` = the key id), so that a run that
died in between can recognise the key it created (and whose secret nobody holds) and delete it.

Clients come from boto3's standard chain: credentials, and the endpoint (``AWS_ENDPOINT_URL_IAM`` or
``AWS_ENDPOINT_URL`` point it at a test server). IAM is global within a partition; the client is made for the
secret's SES region so that botocore picks that partition's IAM endpoint (GovCloud and China have their own).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from functools import cached_property
from typing import Any, Literal

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError
from pydantic import BaseModel, SecretStr

from errors import BadInput, Conflict, NotFound, PermissionDenied, RotationError, Unreachable
from redaction import register_pattern, register_secret

Status = Literal["Active", "Inactive"]
MAX_KEYS = 2  # IAM's quota of access keys per user
MARK_PREFIX = "secret-rotation:"
# IAM's tag-key characters and length (128), less the prefix.
_MARKABLE = re.compile(r"^[\w .:/=+@-]{1,112}$")
_CONFIG = Config(connect_timeout=2, read_timeout=10, retries={"max_attempts": 2, "mode": "standard"})
_DENIED = frozenset({"AccessDenied", "AccessDeniedException", "InvalidClientTokenId", "SignatureDoesNotMatch"})
_TRANSIENT = frozenset({"ServiceFailure", "Throttling", "ThrottlingException", "RequestTimeout"})

# botocore's debug log prints CreateAccessKey's response body, with the new secret, before this module sees it.
register_pattern(r"<SecretAccessKey>(?P<secret>[^<]+)</SecretAccessKey>")


class IamError(RotationError):
    """An IAM step failed; the message names the user and the key id, never a secret."""


class IamUnreachable(IamError, Unreachable):
    """IAM did not answer or answered with a transient error (retried)."""


class IamPermissionDenied(IamError, PermissionDenied):
    """The AWS credentials in use may not manage this user's access keys."""


class IamUserNotFound(IamError, NotFound):
    """The IAM user named by the secret does not exist."""


class AccessKeyLimit(IamError, Conflict):
    """The user already has two access keys, so no new one can be created; nothing was changed."""


class AccessKeyNotFound(IamError, NotFound):
    """The user has no access key with this id."""


class AccessKey(BaseModel):
    """One access key, without its secret."""

    access_key_id: str
    status: Status
    created_at: datetime
    last_used_at: datetime | None = None
    last_used_service: str | None = None

    def describe(self) -> str:
        used = f"last used {self.last_used_at:%Y-%m-%d %H:%M} UTC" if self.last_used_at else "never used"
        return f"{self.access_key_id} ({self.status}, created {self.created_at:%Y-%m-%d %H:%M} UTC, {used})"


class NewAccessKey(BaseModel):
    """A key just created: the only moment its secret is known."""

    access_key_id: str
    secret_access_key: SecretStr
    created_at: datetime


def mark_key(rotation_id: str) -> str:
    """The user tag that marks the key a rotation created until its derived value is stored."""
    if not _MARKABLE.match(rotation_id):
        raise BadInput(
            f"rotation id {rotation_id!r} cannot be part of an IAM tag key (letters, digits, spaces and _.:/=+@- "
            "only, at most 112 characters)"
        )
    return MARK_PREFIX + rotation_id


class IamUser:
    """One IAM user's access keys."""

    def __init__(self, name: str, region: str) -> None:
        self.name = name
        self.region = region

    @cached_property
    def _client(self) -> Any:
        return boto3.session.Session().client("iam", region_name=self.region, config=_CONFIG)

    def _call(self, operation: str, not_found: Callable[[], RotationError] | None = None, **kwargs: Any) -> Any:
        try:
            return getattr(self._client, operation)(**kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            message = exc.response.get("Error", {}).get("Message", "")
            if code == "NoSuchEntity":
                raise (not_found or self._no_user)() from None
            if code in _DENIED:
                raise IamPermissionDenied(
                    f"IAM refused {operation} for user {self.name!r} ({code}); the AWS credentials in use need "
                    "iam:ListAccessKeys, iam:CreateAccessKey, iam:UpdateAccessKey, iam:DeleteAccessKey, "
                    "iam:GetAccessKeyLastUsed, iam:TagUser, iam:UntagUser and iam:ListUserTags on it"
                ) from None
            if code == "LimitExceeded":
                raise AccessKeyLimit(
                    f"IAM user {self.name!r} already has {MAX_KEYS} access keys ({message}); delete the one no "
                    "secret uses, then run again"
                ) from None
            if code in _TRANSIENT or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) >= 500:
                raise IamUnreachable(f"IAM failed {operation} for user {self.name!r} ({code}); retrying") from None
            raise IamError(f"IAM refused {operation} for user {self.name!r}: {code}: {message}") from None
        except (NoCredentialsError, PartialCredentialsError):
            raise IamPermissionDenied(
                "no AWS credentials to manage IAM access keys: configure boto3's standard chain (AWS_PROFILE, "
                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, an instance role)"
            ) from None
        except (BotoConnectionError, HTTPClientError) as exc:
            raise IamUnreachable(f"IAM is unreachable for {operation} ({type(exc).__name__}); retrying") from None
        except BotoCoreError as exc:
            raise IamError(f"IAM call {operation} for user {self.name!r} failed: {type(exc).__name__}: {exc}") from None

    def _no_user(self) -> RotationError:
        return IamUserNotFound(f"IAM user {self.name!r} does not exist; fix ses.iam_user in the SMTP secret")

    def keys(self) -> list[AccessKey]:
        """The user's access keys, oldest first, with their status and last use."""
        answer = self._call("list_access_keys", UserName=self.name)
        keys = []
        for meta in answer["AccessKeyMetadata"]:
            used = self._call("get_access_key_last_used", AccessKeyId=meta["AccessKeyId"])["AccessKeyLastUsed"]
            keys.append(
                AccessKey(
                    access_key_id=meta["AccessKeyId"],
                    status=meta["Status"],
                    created_at=meta["CreateDate"].astimezone(UTC),
                    last_used_at=used["LastUsedDate"].astimezone(UTC) if used.get("LastUsedDate") else None,
                    last_used_service=None if used.get("ServiceName") in (None, "N/A") else used["ServiceName"],
                )
            )
        return sorted(keys, key=lambda k: k.created_at)

    def key(self, access_key_id: str) -> AccessKey | None:
        return next((k for k in self.keys() if k.access_key_id == access_key_id), None)

    def check_room_for_a_key(self, keys: list[AccessKey], in_use: str) -> None:
        """Raise :class:`AccessKeyLimit` if a key cannot be created; ``in_use`` is the key the secret holds."""
        if len(keys) < MAX_KEYS:
            return
        others = [k for k in keys if k.access_key_id != in_use]
        listed = "; ".join(
            k.describe() + (" - the key the secret uses" if k.access_key_id == in_use else "") for k in keys
        )
        raise AccessKeyLimit(
            f"IAM user {self.name!r} already has {len(keys)} access keys, the most IAM allows, so the new one cannot "
            f"be created (nothing was changed): {listed}. Delete "
            f"{' and '.join(k.access_key_id for k in others)} once no consumer uses it, then run again"
        )

    def create_key(self) -> NewAccessKey:
        """Create an access key (the caller checked there is room); its secret is registered for redaction."""
        created = self._call("create_access_key", UserName=self.name)["AccessKey"]
        return NewAccessKey(
            access_key_id=created["AccessKeyId"],
            secret_access_key=SecretStr(register_secret(created["SecretAccessKey"])),
            created_at=created["CreateDate"],
        )

    def set_status(self, access_key_id: str, status: Status) -> bool:
        """Give the key ``status``; False if it already had it. :class:`~errors.NotFound` if it does not exist."""
        key = self.key(access_key_id)
        if key is None:
            raise self._no_key(access_key_id)
        if key.status == status:
            return False
        self._call(
            "update_access_key",
            lambda: self._no_key(access_key_id),
            UserName=self.name,
            AccessKeyId=access_key_id,
            Status=status,
        )
        return True

    def delete_key(self, access_key_id: str) -> bool:
        """Delete the key; False if it was already gone."""
        try:
            self._call(
                "delete_access_key", lambda: self._no_key(access_key_id), UserName=self.name, AccessKeyId=access_key_id
            )
        except AccessKeyNotFound:
            return False
        return True

    def _no_key(self, access_key_id: str) -> RotationError:
        return AccessKeyNotFound(f"IAM user {self.name!r} has no access key {access_key_id}")

    def marked_key(self, rotation_id: str) -> str | None:
        """The key id a rotation marked on the user, if it did."""
        tags = self._call("list_user_tags", UserName=self.name)["Tags"]
        return next((t["Value"] for t in tags if t["Key"] == mark_key(rotation_id)), None)

    def mark(self, rotation_id: str, access_key_id: str) -> None:
        self._call("tag_user", UserName=self.name, Tags=[{"Key": mark_key(rotation_id), "Value": access_key_id}])

    def unmark(self, rotation_id: str) -> None:
        """Remove the rotation's tag; nothing to remove is fine (IAM ignores an absent tag key)."""
        self._call("untag_user", UserName=self.name, TagKeys=[mark_key(rotation_id)])
