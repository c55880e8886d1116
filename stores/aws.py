"""AWS Secrets Manager: one secret, its versions labelled AWSCURRENT, AWSPENDING and AWSPREVIOUS.

``aws://NAME?region=REGION&endpoint_url=URL`` names a secret by name or ARN. Credentials come from boto3's standard
chain; the region from the URI, else from boto3's chain. The labels are used exactly as AWS's own rotation functions
use them: the rotation id is the ClientRequestToken and so the new version's id, staging puts the value under
AWSPENDING, promotion moves AWSCURRENT (AWS itself then moves AWSPREVIOUS to the old current) and removes AWSPENDING.
Secrets Manager cannot delete a version: a discarded or reverted version keeps its value but loses every label,
which AWS calls deprecated; :meth:`AwsStore.describe` lists only labelled versions, as ``describe_secret`` does.
Secrets Manager has no transactions, so every multi-call step is written to finish correctly when run again after
a crash between its calls.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
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

from stores.base import SecretDescription, SecretStore, Stage, VersionInfo
from stores.errors import (
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

_LABELS = {Stage.CURRENT: "AWSCURRENT", Stage.PENDING: "AWSPENDING", Stage.PREVIOUS: "AWSPREVIOUS"}
_STAGES = {label: stage for stage, label in _LABELS.items()}
# AWS's rule for ClientRequestToken and VersionId.
_ID_LENGTH = range(32, 65)
# An unreachable endpoint must fail in seconds, not after botocore's default 60 s timeouts and 5 attempts.
_CONFIG = Config(connect_timeout=2, read_timeout=10, retries={"max_attempts": 2, "mode": "standard"})
_DENIED = frozenset(
    {"AccessDeniedException", "UnrecognizedClientException", "InvalidSignatureException", "ExpiredTokenException"}
)
_TRANSIENT = frozenset({"InternalServiceError", "ThrottlingException", "ServiceUnavailable", "RequestTimeout"})


class InvalidRotationId(StoreError, ValueError):
    """A rotation id that AWS cannot use as a ClientRequestToken / VersionId."""


class AwsStore(SecretStore):
    """One secret in AWS Secrets Manager (or anything answering its API, such as moto_server)."""

    OPTIONS: ClassVar[dict[str, str]] = {"region": "region=REGION", "endpoint_url": "endpoint_url=URL"}

    def __init__(self, uri: SecretURI) -> None:
        super().__init__(uri)
        endpoint = self.uri.options.get("endpoint_url")
        if endpoint is not None and not endpoint.startswith(("https://", "http://")):
            raise InvalidStoreURI(
                f"endpoint_url {endpoint!r} in {uri.display} is not a URL: use https://HOST[:PORT] (or http:// for a "
                "local test server)"
            )
        self.secret_id = uri.name
        self.endpoint_url = endpoint

    @cached_property
    def _client(self) -> Any:
        """The boto3 client, built on first use: construction costs tens of milliseconds."""
        session = boto3.session.Session(region_name=self.uri.options.get("region"))
        if not session.region_name:
            raise InvalidStoreURI(
                f"no AWS region for {self.uri.display}: add ?region=REGION to the store URI, or set AWS_REGION "
                "(or a region in your AWS profile)"
            )
        return session.client("secretsmanager", endpoint_url=self.endpoint_url, config=_CONFIG)

    def canonical_options(self, uri: SecretURI) -> dict[str, str]:
        options = dict(uri.options)
        # Without a region the SDK's chain picks one: name it, so both spellings are one secret.
        region = options.get("region") or boto3.session.Session().region_name
        if region:
            options["region"] = region
        if "endpoint_url" in options:
            options["endpoint_url"] = options["endpoint_url"].rstrip("/")
        return options

    # -- reads ------------------------------------------------------------------------------------------------------

    def read(self, stage: Stage = Stage.CURRENT) -> str:
        stage = Stage(stage)
        # Always name the stage: moto (and callers of old SDKs) can return a stale value without it.
        answer = self._call(
            "get_secret_value",
            lambda: VersionNotFound(f"secret {self.secret_id!r} in {self.uri.display} has no {stage.value} version"),
            SecretId=self.secret_id,
            VersionStage=_LABELS[stage],
        )
        return _string_of(answer, self.uri.display)

    def read_version(self, version_id: str) -> str:
        self._check_id(version_id, "version id")
        answer = self._call(
            "get_secret_value",
            lambda: VersionNotFound(f"secret {self.secret_id!r} in {self.uri.display} has no version {version_id!r}"),
            SecretId=self.secret_id,
            VersionId=version_id,
        )
        return _string_of(answer, self.uri.display)

    def describe(self) -> SecretDescription:
        stages = self._stages()
        dates = {version["VersionId"]: version.get("CreatedDate") for version in self._versions()}
        ordered = sorted(stages, key=lambda v: (dates.get(v) is None, dates.get(v) or datetime.min, v))
        versions = tuple(
            VersionInfo(
                version_id=version_id,
                stages=tuple(sorted(stages[version_id], key=list(Stage).index)),
                created_at=dates.get(version_id),
            )
            for version_id in ordered
        )
        return SecretDescription(uri=self.uri.display, versions=versions)

    def list(self) -> list[str]:
        names: list[str] = []
        token: dict[str, str] = {}
        while True:
            page = self._call("list_secrets", None, **token)
            names += [entry["Name"] for entry in page.get("SecretList", [])]
            if not page.get("NextToken"):
                return sorted(names)
            token = {"NextToken": page["NextToken"]}

    # -- writes -----------------------------------------------------------------------------------------------------

    def create(self, value: str) -> str:
        _check_value(value)
        answer = self._call(
            "create_secret",
            None,
            Name=self.secret_id,
            SecretString=value,
            ClientRequestToken=str(uuid.uuid4()),
        )
        return answer["VersionId"]

    def stage(self, value: str, rotation_id: str) -> str:
        _check_value(value)
        self._check_id(rotation_id, "rotation id")
        stages = self._stages()
        if rotation_id in stages:
            return rotation_id
        if self._version_exists(rotation_id):
            raise StagingConflict(
                f"rotation {rotation_id!r} of secret {self.secret_id!r} in {self.uri.display} was discarded or "
                "reverted (its version has no stage left): start a new rotation with a new id"
            )
        holder = _holder(stages, Stage.PENDING)
        if holder is not None:
            raise StagingConflict(
                f"rotation {holder!r} holds the PENDING stage of secret {self.secret_id!r} in {self.uri.display}: "
                f"finish it (promote) or roll it back (revert, discard) before staging rotation {rotation_id!r}"
            )
        # put_secret_value would silently take AWSPENDING from another version: the holder check above prevents it.
        self._call(
            "put_secret_value",
            None,
            SecretId=self.secret_id,
            SecretString=value,
            ClientRequestToken=rotation_id,
            VersionStages=[_LABELS[Stage.PENDING]],
        )
        return rotation_id

    def promote(self, rotation_id: str) -> None:
        self._check_id(rotation_id, "rotation id")
        stages = self._stages()
        held = stages.get(rotation_id, set())
        if Stage.CURRENT not in held:
            if Stage.PENDING not in held:
                raise VersionNotFound(
                    f"rotation {rotation_id!r} has no PENDING version of secret {self.secret_id!r} in "
                    f"{self.uri.display} (PENDING: {_holder(stages, Stage.PENDING) or 'none'}): "
                    "stage it before promoting"
                )
            # AWS moves AWSPREVIOUS to the version AWSCURRENT leaves, in the same call.
            self._move(Stage.CURRENT, to=rotation_id, away_from=_holder(stages, Stage.CURRENT))
        if Stage.PENDING in held:
            self._move(Stage.PENDING, to=None, away_from=rotation_id)

    def revert(self, rotation_id: str, previous_version: str | None) -> None:
        self._check_id(rotation_id, "rotation id")
        stages = self._stages()
        held = stages.get(rotation_id, set())
        if Stage.CURRENT in held:
            back = _holder(stages, Stage.PREVIOUS)
            if back is None:
                raise VersionNotFound(
                    f"cannot revert rotation {rotation_id!r} of secret {self.secret_id!r} in {self.uri.display}: "
                    "no PREVIOUS version to make CURRENT again; stage and promote a known good value instead"
                )
            if previous_version is not None and (
                previous_version in (back, rotation_id) or not self._version_exists(previous_version)
            ):
                raise VersionNotFound(
                    f"cannot revert rotation {rotation_id!r} of secret {self.secret_id!r} in {self.uri.display}: "
                    f"version {previous_version!r} recorded as PREVIOUS before the rotation is not an older "
                    "version of this secret; check the rotation journal"
                )
            if Stage.PENDING in held:
                self._move(Stage.PENDING, to=None, away_from=rotation_id)
            # AWS hands AWSPREVIOUS to rotation_id here; the next move gives it back to the pre-rotation version.
            self._move(Stage.CURRENT, to=back, away_from=rotation_id)
            self._restore_previous(rotation_id, previous_version)
        elif Stage.PREVIOUS in held:
            # A revert interrupted between its two label moves: CURRENT is back already, PREVIOUS is not.
            self._restore_previous(rotation_id, previous_version)
        elif Stage.PENDING in held:
            self._move(Stage.PENDING, to=None, away_from=rotation_id)

    def discard(self, rotation_id: str) -> None:
        self._check_id(rotation_id, "rotation id")
        held = self._stages().get(rotation_id, set())
        # A version that is or was in service stays; Secrets Manager cannot delete a version, only unlabel it.
        if Stage.PENDING in held and not held & {Stage.CURRENT, Stage.PREVIOUS}:
            self._move(Stage.PENDING, to=None, away_from=rotation_id)

    # -- Secrets Manager calls --------------------------------------------------------------------------------------

    def _restore_previous(self, rotation_id: str, previous_version: str | None) -> None:
        if previous_version is None:
            self._move(Stage.PREVIOUS, to=None, away_from=rotation_id)
        else:
            self._move(Stage.PREVIOUS, to=previous_version, away_from=rotation_id)

    def _stages(self) -> dict[str, set[Stage]]:
        """Version id -> its stages, from ``describe_secret`` (which lists only labelled versions)."""
        answer = self._call("describe_secret", None, SecretId=self.secret_id)
        stages = {
            version_id: {_STAGES[label] for label in labels if label in _STAGES}
            for version_id, labels in answer.get("VersionIdsToStages", {}).items()
        }
        # moto also lists unlabelled versions (with no stage); AWS leaves them out: drop them so both answer alike.
        return {version_id: held for version_id, held in stages.items() if held}

    def _versions(self) -> list[dict[str, Any]]:
        """Every version, labelled or not (AWS calls unlabelled ones deprecated), without values."""
        versions: list[dict[str, Any]] = []
        token: dict[str, str] = {}
        while True:
            page = self._call("list_secret_version_ids", None, SecretId=self.secret_id, IncludeDeprecated=True, **token)
            versions += page.get("Versions", [])
            if not page.get("NextToken"):
                return versions
            token = {"NextToken": page["NextToken"]}

    def _version_exists(self, version_id: str) -> bool:
        return any(version["VersionId"] == version_id for version in self._versions())

    def _move(self, stage: Stage, *, to: str | None, away_from: str | None) -> None:
        arguments = {"SecretId": self.secret_id, "VersionStage": _LABELS[stage]}
        if to is not None:
            arguments["MoveToVersionId"] = to
        if away_from is not None:
            arguments["RemoveFromVersionId"] = away_from
        self._call("update_secret_version_stage", None, **arguments)

    def _call(self, operation: str, version_missing: Callable[[], StoreError] | None, **arguments: Any) -> Any:
        """One API call with its errors turned into store errors.

        The store error is raised outside the ``except`` block so that no botocore exception, whose parameter
        validation messages can quote a request's values, is chained to it.
        """
        try:
            return getattr(self._client, operation)(**arguments)
        except ClientError as exc:
            error = self._translate(operation, exc, version_missing)
        except (NoCredentialsError, PartialCredentialsError):
            error = StorePermissionDenied(
                f"no usable AWS credentials for {self.uri.display}: configure boto3's credential chain "
                "(AWS_PROFILE, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, an instance or task role)"
            )
        except BotoCoreError as exc:
            error = self._unreachable(operation, exc)
        raise error

    def _translate(
        self, operation: str, exc: ClientError, version_missing: Callable[[], StoreError] | None
    ) -> StoreError:
        code = exc.response.get("Error", {}).get("Code", "")
        message = exc.response.get("Error", {}).get("Message", "")
        if code == "ResourceNotFoundException":
            if version_missing is not None and self._secret_exists():
                return version_missing()
            return SecretNotFound(
                f"secret {self.secret_id!r} does not exist in {self.uri.display}: create it first, for example "
                f"open_store({self.uri.display!r}).create(value), or check the name and region"
            )
        if code == "ResourceExistsException":
            return SecretExists(
                f"secret {self.secret_id!r} already exists in {self.uri.display}: rotate it instead, or pick another "
                "secret name"
            )
        if code in _DENIED:
            return StorePermissionDenied(
                f"AWS refused {operation} on {self.uri.display} ({code}): give the credentials in use the "
                f"secretsmanager:{_action(operation)} permission on this secret, or use other credentials"
            )
        if code in _TRANSIENT or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) >= 500:
            return StoreUnavailable(
                f"AWS Secrets Manager failed {operation} on {self.uri.display} after retries ({code}: {message}); "
                "retry later"
            )
        return StoreError(f"AWS Secrets Manager refused {operation} on {self.uri.display} ({code}: {message})")

    def _unreachable(self, operation: str, exc: BotoCoreError) -> StoreError:
        endpoint = self.endpoint_url or f"the Secrets Manager endpoint of region {self._client.meta.region_name}"
        if isinstance(exc, BotoConnectionError | HTTPClientError):
            return StoreUnavailable(
                f"cannot reach {endpoint} for {self.uri.display} ({type(exc).__name__}): check the network, the "
                "endpoint_url and the region, then retry"
            )
        return StoreError(f"{operation} on {self.uri.display} failed in the AWS SDK ({type(exc).__name__})")

    def _secret_exists(self) -> bool:
        try:
            self._call("describe_secret", None, SecretId=self.secret_id)
        except SecretNotFound:
            return False
        return True

    def _check_id(self, value: str, what: str) -> None:
        if not isinstance(value, str) or len(value) not in _ID_LENGTH:
            raise InvalidRotationId(
                f"{what} {value!r} for {self.uri.display} cannot be an AWS version id: it must be a string of 32 to "
                "64 characters, for example str(uuid.uuid4())"
            )


def _holder(stages: dict[str, set[Stage]], stage: Stage) -> str | None:
    return next((version_id for version_id, held in stages.items() if stage in held), None)


def _string_of(answer: dict[str, Any], where: str) -> str:
    if "SecretString" not in answer:
        raise StoreError(
            f"{where} holds a binary secret (SecretBinary): this project stores text values only; convert it to a "
            "string secret (base64 or JSON)"
        )
    return answer["SecretString"]


def _action(operation: str) -> str:
    return "".join(part.capitalize() for part in operation.split("_"))


def _check_value(value: str) -> None:
    if not isinstance(value, str):
        raise TypeError(f"a secret value must be a str (JSON for structured secrets), not {type(value).__name__}")
