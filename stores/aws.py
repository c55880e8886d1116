"""AWS Secrets Manager: one secret, its versions labelled AWSCURRENT, AWSPENDING and AWSPREVIOUS.

``aws://NAME?region=REGION&endpoint_url=URL`` names a secret by name or ARN. Credentials come from boto3's standard
chain; the region from the URI, else from boto3's chain. The labels are used exactly as AWS's own rotation functions
use them: the rotation id is the ClientRequestToken and so the new version's id, staging puts the value under
AWSPENDING, promotion moves AWSCURRENT (AWS itself then moves AWSPREVIOUS to the old current) and removes AWSPENDING.
A version whose labels are all gone is what AWS calls deprecated: Secrets Manager cannot delete one version, and
removes deprecated versions itself, so discarding removes labels, pruning has nothing left to do (no call), and
:meth:`describe` lists only labelled versions, as ``describe_secret`` does (without dates: Secrets Manager reports
none per version there); ``describe(dated=True)`` dates them with one ``ListSecretVersionIds`` call more, and
without that permission (a role allowed only DescribeSecret and GetSecretValue) leaves them undated.

Secrets Manager has no conditional writes: a label move names the version it takes the label
from, which AWS checks; a put of AWSPENDING does not. Every multi-call step finishes correctly when run again after
a crash between its calls.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from datetime import UTC, datetime
from functools import cached_property
from typing import Any, ClassVar

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

from stores.base import SecretStore, Snapshot, Stage, Staged, StageMap, shared_client
from stores.errors import (
    InvalidRequest,
    InvalidStoreURI,
    SecretExists,
    SecretNotFound,
    StagingConflict,
    StoreError,
    StorePermissionDenied,
    StoreUnavailable,
    VersionNotFound,
)
from stores.uri import SecretURI

_ARN = re.compile(r"arn:aws[a-z-]*:secretsmanager:(?P<region>[a-z0-9-]+):\d{12}:secret:.+")
_LABELS = {Stage.CURRENT: "AWSCURRENT", Stage.PENDING: "AWSPENDING", Stage.PREVIOUS: "AWSPREVIOUS"}
_STAGES = {label: stage for stage, label in _LABELS.items()}
# An unreachable endpoint must fail in seconds, not after botocore's default 60 s timeouts and 5 attempts.
_CONFIG = Config(connect_timeout=2, read_timeout=10, retries={"max_attempts": 2, "mode": "standard"})
_DENIED = frozenset(
    {"AccessDeniedException", "UnrecognizedClientException", "InvalidSignatureException", "ExpiredTokenException"}
)
_TRANSIENT = frozenset({"InternalServiceError", "ThrottlingException", "ServiceUnavailable", "RequestTimeout"})

_ERRORS: dict[str, tuple[type[StoreError], str]] = {
    "ResourceNotFoundException": (SecretNotFound, "the secret does not exist: check its name and region, or create "
                                  "it first"),
    "ResourceExistsException": (SecretExists, "the secret already exists: rotate it instead, or pick another name"),
    "denied": (StorePermissionDenied, "give the credentials in use secretsmanager:DescribeSecret, GetSecretValue, "
               "PutSecretValue and UpdateSecretVersionStage on this secret, or use other credentials"),
    "no credentials": (StorePermissionDenied, "no usable AWS credentials: configure boto3's chain (AWS_PROFILE, "
                       "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, an instance or task role)"),
    "unavailable": (StoreUnavailable, "Secrets Manager failed after retries; retry later"),
    "unreachable": (StoreUnavailable, "cannot reach {store.endpoint}: check the network, the endpoint_url and "
                    "the region, then retry"),
    "moved": (StagingConflict, "another writer moved the labels since they were read (AWS checks the version a "
              "label is taken from); nothing was changed by this call, retry"),
    "invalid": (InvalidRequest, "Secrets Manager refused the request as invalid"),
}  # fmt: skip


def sibling_uri(uri: SecretURI, arn: str) -> str:
    """The store URI of the secret ``arn`` in the same Secrets Manager as ``uri``: the same endpoint (and so the
    same credentials), in the ARN's own region."""
    found = _ARN.fullmatch(arn)
    if found is None:
        raise InvalidStoreURI(f"{arn!r} is not the ARN of a Secrets Manager secret (arn:aws:secretsmanager:...)")
    options = {**uri.options, "region": found["region"]}
    return SecretURI(scheme="aws", location="", name=arn, options=options).display


class AwsStore(SecretStore):
    """One secret in AWS Secrets Manager (or anything answering its API, such as moto_server)."""

    OPTIONS: ClassVar[dict[str, str]] = {"region": "region=REGION", "endpoint_url": "endpoint_url=URL"}
    REMOVES_UNSTAGED_VERSIONS: ClassVar[bool] = True  # deprecated versions, see the module docstring
    ROTATION_ID = re.compile(".{32,64}", re.S)
    ROTATION_ID_RULE = "an AWS version id is a string of 32 to 64 characters, for example str(uuid.uuid4())"
    ERRORS = _ERRORS

    def __init__(self, uri: SecretURI) -> None:
        super().__init__(uri)
        self.secret_id = uri.name
        self.endpoint_url = self._url_option("endpoint_url")

    def canonical_options(self, uri: SecretURI) -> dict[str, str]:
        options = dict(uri.options)
        # Without a region the SDK's chain picks one: name it, so both spellings are one secret.
        region = options.get("region") or boto3.session.Session().region_name
        if region:
            options["region"] = region
        if "endpoint_url" in options:
            options["endpoint_url"] = options["endpoint_url"].rstrip("/")
        return options

    @cached_property
    def _client(self) -> Any:
        region = self.uri.options.get("region")
        if not region:
            raise InvalidStoreURI(
                f"no AWS region for {self.uri.display}: add ?region=REGION to the store URI, or set AWS_REGION "
                "(or a region in your AWS profile)"
            )

        def build() -> Any:
            return boto3.session.Session(region_name=region).client(
                "secretsmanager", endpoint_url=self.endpoint_url, config=_CONFIG
            )

        # One client per region, endpoint and credentials named by the environment (boto3's chain reads it once).
        identity = (os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_PROFILE"))
        return shared_client(("aws", region, self.endpoint_url, identity), build)

    # --- primitives ------------------------------------------------------------------------------------------------

    def _snapshot(self, repair: bool) -> Snapshot:
        answer = self._call("describe the secret", lambda: self._client.describe_secret(SecretId=self.secret_id))
        # moto also lists versions without a label; AWS leaves those (deprecated) out. Both are versions it knows.
        labels = answer.get("VersionIdsToStages", {})
        holders = {_STAGES[label]: v for v, held in labels.items() for label in held if label in _STAGES}
        stages = StageMap(**{stage.name.lower(): version for stage, version in holders.items()})
        return Snapshot(stages=stages, versions=frozenset(labels))

    def _read_stage(self, stage: Stage) -> str:
        # One call instead of a describe and a read; always name the stage: moto can return a stale value without.
        try:
            answer = self._get(f"read the {stage.value} version", VersionStage=_LABELS[stage])
        except SecretNotFound:
            raise self._missing_version(f"no version of {self.uri.display} is {stage.value}") from None
        self._remember(answer["VersionId"], answer["SecretString"])
        return answer["SecretString"]

    def _read_value(self, version_id: str, snapshot: Snapshot | None) -> str:
        if not self.ROTATION_ID.fullmatch(version_id):
            raise VersionNotFound(f"{self.uri.display} has no version {version_id!r}: AWS version ids are 32-64 long")
        return self._get(f"read version {version_id}", VersionId=version_id)["SecretString"]

    def _write_stages(self, snapshot: Snapshot, stages: StageMap, staged: Staged | None = None) -> str | None:
        """Label moves, in the order that leaves a resumable state after a crash between any two of them."""
        before = snapshot.stages
        if staged is not None:
            try:
                self._call(
                    "stage a new version",
                    lambda: self._client.put_secret_value(
                        SecretId=self.secret_id,
                        SecretString=staged.value,
                        ClientRequestToken=staged.rotation_id,
                        VersionStages=[_LABELS[Stage.PENDING]],
                    ),
                )
            except SecretExists:  # the token names a deprecated version with another value
                raise StagingConflict(
                    f"rotation {staged.rotation_id!r} of {self.uri.display} was discarded or reverted (its version "
                    "has no stage left): start a new rotation with a new id"
                ) from None
            return staged.rotation_id
        if stages.current != before.current:
            self._move(Stage.CURRENT, stages.current, before.current)
            # AWS has just handed AWSPREVIOUS to the version AWSCURRENT left.
            before = before.but(current=stages.current, previous=before.current)
        if stages.previous != before.previous:
            self._move(Stage.PREVIOUS, stages.previous, before.previous)
        if stages.pending != before.pending:
            self._move(Stage.PENDING, stages.pending, before.pending)
        return None

    def _delete(self, snapshot: Snapshot, version_id: str) -> None:
        """Nothing to do: the version has no label left, which is all Secrets Manager can do to one version."""

    def _delete_secret(self, snapshot: Snapshot) -> None:
        # Without the recovery window: the name is free again at once (AWS may take a few seconds to release it).
        with contextlib.suppress(SecretNotFound):
            self._call(
                "delete the secret",
                lambda: self._client.delete_secret(SecretId=self.secret_id, ForceDeleteWithoutRecovery=True),
            )

    def _describe(self, snapshot: Snapshot) -> list[tuple[str, datetime | None]]:
        stages = snapshot.stages
        order = [stages.previous, stages.current, stages.pending]  # oldest first, as the labels say
        return [(v, None) for n, v in enumerate(order) if v is not None and v not in order[:n]]

    def _version_dates(self, snapshot: Snapshot) -> dict[str, datetime]:
        dates: dict[str, datetime] = {}
        token: dict[str, str] = {}
        try:
            while True:
                page = self._call(
                    "list the versions",
                    lambda token=token: self._client.list_secret_version_ids(SecretId=self.secret_id, **token),
                )
                dates |= {v["VersionId"]: v["CreatedDate"].astimezone(UTC) for v in page.get("Versions", [])}
                if not page.get("NextToken"):
                    return dates
                token = {"NextToken": page["NextToken"]}
        except StorePermissionDenied:
            return {}  # a reader without secretsmanager:ListSecretVersionIds: the versions stay undated

    def _create(self, value: str) -> str:
        answer = self._call(
            "create the secret",
            lambda: self._client.create_secret(
                Name=self.secret_id, SecretString=value, ClientRequestToken=str(uuid.uuid4())
            ),
        )
        return answer["VersionId"]

    def _list(self) -> list[str]:
        names: list[str] = []
        token: dict[str, str] = {}
        while True:
            page = self._call("list the secrets", lambda token=token: self._client.list_secrets(**token))
            names += [entry["Name"] for entry in page.get("SecretList", [])]
            if not page.get("NextToken"):
                return sorted(names)
            token = {"NextToken": page["NextToken"]}

    # --- Secrets Manager calls --------------------------------------------------------------------------------------

    def _get(self, action: str, **which: str) -> dict[str, Any]:
        answer = self._call(action, lambda: self._client.get_secret_value(SecretId=self.secret_id, **which))
        if "SecretString" not in answer:
            raise InvalidRequest(
                f"{self.uri.display} holds a binary secret (SecretBinary): this project stores text values only; "
                "convert it to a string secret (base64 or JSON)"
            )
        return answer

    def _move(self, stage: Stage, to: str | None, away_from: str | None) -> None:
        arguments = {"SecretId": self.secret_id, "VersionStage": _LABELS[stage]}
        if to is not None:
            arguments["MoveToVersionId"] = to
        if away_from is not None:
            arguments["RemoveFromVersionId"] = away_from
        self._call(f"move the {_LABELS[stage]} label", lambda: self._client.update_secret_version_stage(**arguments))

    def _condition(self, exc: Exception, action: str) -> tuple[str, str] | None:
        if isinstance(exc, ClientError):
            code = exc.response.get("Error", {}).get("Code", "")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code in ("ResourceNotFoundException", "ResourceExistsException"):
                return code, code
            if code in _DENIED or status in (401, 403):
                return "denied", code
            if code in _TRANSIENT or status >= 500:
                return "unavailable", code
            return ("moved" if code == "InvalidParameterException" and "label" in action else "invalid"), code
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            return "no credentials", type(exc).__name__
        if isinstance(exc, BotoConnectionError | HTTPClientError):
            return "unreachable", type(exc).__name__
        return ("invalid", type(exc).__name__) if isinstance(exc, BotoCoreError) else None

    @property
    def endpoint(self) -> str:
        return self.endpoint_url or f"the Secrets Manager endpoint of region {self.uri.options.get('region')}"
