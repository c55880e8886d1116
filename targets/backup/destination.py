"""Where backups are kept: a local folder, or an S3 bucket (server-side encrypted with KMS when a key is given).

A destination is named by a URI: ``/abs/folder`` (or ``file:///abs/folder``), or
``s3://BUCKET/PREFIX?region=REGION&kms_key=KEY_ID_OR_ALIAS&endpoint_url=URL``. S3 credentials come from boto3's
standard chain, never from the URI.

A backup is three objects named after its id: the archive, the manifest's signature, then the manifest, written in
that order so that a backup whose manifest exists is complete (a crash leaves at most an unlisted archive, which the
next attempt with the same id overwrites). Drill results are small JSON records under ``drills/``.
"""

from __future__ import annotations

import abc
import contextlib
import os
import stat
import uuid
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from errors import BadInput, NotFound, PermissionDenied, Unreachable
from targets.backup.archive import is_backup_id

_CONFIG = Config(connect_timeout=2, read_timeout=30, retries={"max_attempts": 2, "mode": "standard"})
_S3_OPTIONS = {"region": "region=REGION", "kms_key": "kms_key=KEY_ID_OR_ALIAS", "endpoint_url": "endpoint_url=URL"}
DRILLS = "drills/"


class DestinationError(BadInput):
    """A destination URI, folder or bucket that cannot hold backups; nothing was written."""


class BackupNotFound(NotFound):
    """No backup (or no object of it) with that name at the destination."""


class DestinationDenied(PermissionDenied):
    """The credentials in use may not read or write the destination."""


class DestinationUnreachable(Unreachable):
    """The destination did not answer; worth another attempt."""


def payload_name(backup_id: str) -> str:
    return f"{backup_id}.payload.gpg"


def manifest_name(backup_id: str) -> str:
    return f"{backup_id}.manifest.json"


def signature_name(backup_id: str) -> str:
    return f"{backup_id}.manifest.json.asc"


class Destination(abc.ABC):
    """A flat set of named objects."""

    display: str

    @abc.abstractmethod
    def check_writable(self) -> None:
        """Refuse (:class:`DestinationError`) a destination that cannot be written, without writing anything."""

    @abc.abstractmethod
    def write(self, name: str, data: bytes) -> None:
        """Store ``data`` as ``name`` all at once: a reader sees the old object or the new one, never a part."""

    @abc.abstractmethod
    def read(self, name: str) -> bytes: ...

    @abc.abstractmethod
    def exists(self, name: str) -> bool: ...

    @abc.abstractmethod
    def names(self, prefix: str = "") -> list[str]:
        """Names of the objects that start with ``prefix``, sorted."""

    @abc.abstractmethod
    def delete(self, name: str) -> None:
        """Remove ``name``; already gone: nothing to do."""

    def backups(self) -> list[str]:
        """Ids of the complete backups here (those with a manifest), oldest first."""
        suffix = manifest_name("")
        return sorted(n[: -len(suffix)] for n in self.names() if n.endswith(suffix) and is_backup_id(n[: -len(suffix)]))

    def missing(self, name: str) -> BackupNotFound:
        return BackupNotFound(f"{self.display} has no {name}: list its backups, or check the destination")


class LocalFolder(Destination):
    """A folder only its owner may enter (0700), holding files only its owner may read (0600)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.display = str(path)

    def check_writable(self) -> None:
        existing = self.path
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir():
            raise DestinationError(f"backup folder {self.path} cannot be made: {existing} is not a folder")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise DestinationError(f"backup folder {existing} is not writable by this user: choose another folder")
        if existing == self.path:
            mode = self.path.stat().st_mode
            if mode & 0o077:
                raise DestinationError(
                    f"backup folder {self.path} has mode {stat.filemode(mode)}: other users may list it; "
                    f"run chmod 700 {self.path}, or choose a new folder (it is created with mode 0700)"
                )

    def _file(self, name: str) -> Path:
        path = (self.path / name).resolve()
        if self.path.resolve() not in path.parents:
            raise DestinationError(f"{name!r} is not a name inside backup folder {self.path}")
        return path

    @staticmethod
    def _make_folders(folder: Path) -> None:
        missing: list[Path] = []
        while not folder.exists():
            missing.append(folder)
            folder = folder.parent
        for made in reversed(missing):
            with contextlib.suppress(FileExistsError):
                made.mkdir(mode=0o700)
                os.chmod(made, 0o700)  # mkdir's mode passes through the umask

    def write(self, name: str, data: bytes) -> None:
        target = self._file(name)
        self.check_writable()
        self._make_folders(target.parent)
        temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, target)
        finally:
            temporary.unlink(missing_ok=True)
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def read(self, name: str) -> bytes:
        try:
            return self._file(name).read_bytes()
        except FileNotFoundError:
            raise self.missing(name) from None
        except PermissionError:
            raise DestinationDenied(f"{self.path / name} is not readable by this user") from None

    def exists(self, name: str) -> bool:
        return self._file(name).is_file()

    def names(self, prefix: str = "") -> list[str]:
        if not self.path.is_dir():
            return []
        found = (p.relative_to(self.path).as_posix() for p in self.path.rglob("*") if p.is_file())
        return sorted(n for n in found if n.startswith(prefix) and not Path(n).name.startswith("."))

    def delete(self, name: str) -> None:
        self._file(name).unlink(missing_ok=True)


class S3Prefix(Destination):
    """Objects under ``prefix`` in an S3 bucket; with ``kms_key``, every object is encrypted with that KMS key."""

    def __init__(self, bucket: str, prefix: str, options: dict[str, str], display: str) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.region = options.get("region")
        self.kms_key = options.get("kms_key")
        self.endpoint_url = options.get("endpoint_url")
        self.display = display

    @cached_property
    def _client(self) -> Any:
        session = boto3.session.Session(region_name=self.region)
        if not session.region_name:
            raise DestinationError(f"no AWS region for {self.display}: add ?region=REGION or set AWS_REGION")
        return session.client("s3", endpoint_url=self.endpoint_url, config=_CONFIG)

    def _call(self, operation: str, name: str, **arguments: Any) -> Any:
        try:
            return getattr(self._client, operation)(Bucket=self.bucket, **arguments)
        except ClientError as exc:
            error = self._translate(operation, name, exc)
        except NoCredentialsError:
            error = DestinationDenied(f"no usable AWS credentials for {self.display}: configure boto3's chain")
        except BotoCoreError as exc:
            error = DestinationUnreachable(f"cannot reach S3 for {self.display} ({type(exc).__name__}): retry later")
        raise error

    def _translate(self, operation: str, name: str, exc: ClientError) -> Exception:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code == "NoSuchBucket":
            return DestinationError(f"bucket {self.bucket} of {self.display} does not exist: create it first")
        if code in ("NoSuchKey", "404", "NotFound"):
            return self.missing(name)
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "KMS.AccessDeniedException"):
            return DestinationDenied(
                f"S3 refused {operation} on {self.display} ({code}): give the credentials in use access to the "
                "bucket (and to its KMS key)"
            )
        if status >= 500 or code in ("SlowDown", "RequestTimeout"):
            return DestinationUnreachable(f"S3 failed {operation} on {self.display} ({code}): retry later")
        return DestinationError(f"S3 refused {operation} on {self.display} ({code})")

    def check_writable(self) -> None:
        self._call("head_bucket", self.bucket)

    def write(self, name: str, data: bytes) -> None:
        encryption = {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": self.kms_key} if self.kms_key else {}
        self._call("put_object", name, Key=self.prefix + name, Body=data, **encryption)

    def read(self, name: str) -> bytes:
        return self._call("get_object", name, Key=self.prefix + name)["Body"].read()

    def head(self, name: str) -> dict[str, Any]:
        return self._call("head_object", name, Key=self.prefix + name)

    def exists(self, name: str) -> bool:
        try:
            self.head(name)
        except BackupNotFound:
            return False
        return True

    def names(self, prefix: str = "") -> list[str]:
        found: list[str] = []
        token: dict[str, str] = {}
        while True:
            page = self._call("list_objects_v2", prefix, Prefix=self.prefix + prefix, **token)
            found += [item["Key"][len(self.prefix) :] for item in page.get("Contents", [])]
            if not page.get("IsTruncated"):
                return sorted(found)
            token = {"ContinuationToken": page["NextContinuationToken"]}

    def delete(self, name: str) -> None:
        self._call("delete_object", name, Key=self.prefix + name)


def open_destination(uri: str) -> Destination:
    """The destination named by ``uri``; :class:`DestinationError` saying how to write one otherwise."""
    if uri.startswith("/"):
        return LocalFolder(Path(os.path.normpath(uri)))
    parts = urlsplit(uri)
    if parts.scheme == "file" and parts.path.startswith("/") and not parts.netloc:
        return LocalFolder(Path(os.path.normpath(parts.path)))
    if parts.scheme == "s3" and parts.netloc:
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        options = dict(pairs)
        unknown = sorted(set(options) - set(_S3_OPTIONS))
        if unknown or len(options) < len(pairs):
            raise DestinationError(
                f"backup destination {uri!r} has unknown or repeated options ({', '.join(unknown) or 'repeated'}): "
                f"an s3 destination accepts {', '.join(_S3_OPTIONS.values())}, each once"
            )
        return S3Prefix(parts.netloc, parts.path, options, uri)
    raise DestinationError(
        f"{uri!r} is not a backup destination: give an absolute folder (/var/backups/secrets) or "
        "s3://BUCKET/PREFIX?region=REGION[&kms_key=KEY]"
    )
