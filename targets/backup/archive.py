"""The backup format: an encrypted archive holding the values, and a manifest beside it holding none.

The archive (``<id>.payload.gpg``) is one OpenPGP message whose plaintext is JSON: the backup id, where it came from,
a random 256-bit checksum key, and each secret's versions (id, stages, creation date, value).

The manifest (``<id>.manifest.json``, signed in ``<id>.manifest.json.asc``) lists the same secrets and versions with
a keyed checksum in place of each value: ``HMAC-SHA256(key, JSON [name, version id, value])``. The key is random per
backup and lives only inside the encrypted archive, so the manifest says nothing about the values: not a guessable
password (a plain hash could be tested against a word list; without the key nothing can be tested), not whether two
secrets or two backups hold the same value (the name, the version id and each backup's own key are mixed in). A key
derived from the values would break both: equal values would give equal checksums across backups, and weak values
would give a weak key. Whoever can decrypt the archive can recompute every checksum, which is what a restore and a
drill do to prove that each value they wrote is the one that was backed up.

The manifest also names the archive's SHA-256, so with a valid signature it vouches for the archive before anything
is decrypted; after decryption the archive must list exactly the manifest's secrets and versions with matching
checksums, which catches an altered manifest even when no signing key is configured.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import uuid
from datetime import UTC, datetime
from typing import Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from errors import BadInput, CheckFailed

ARCHIVE_FORMAT = "secret-rotation-backup-archive/1"
MANIFEST_FORMAT = "secret-rotation-backup-manifest/1"
StageSelection = Literal["current", "all"]
_BACKUP_ID = re.compile(r"^(\d{8}T\d{6}Z)-[0-9a-f]{8}$")


class BackupTampered(CheckFailed):
    """An archive or manifest that is not what the backup wrote: refused before anything is restored."""


class InvalidBackupId(BadInput):
    """A string that is not a backup id."""


def new_id(now: datetime | None = None) -> str:
    """An id that sorts by creation time, for backups and drills: ``20260131T020000Z-1a2b3c4d``."""
    return f"{(now or datetime.now(UTC)).astimezone(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


def backup_time(backup_id: str) -> datetime:
    """When backup ``backup_id`` was made, read from the id."""
    match = _BACKUP_ID.match(backup_id)
    if match is None:
        raise InvalidBackupId(
            f"{backup_id!r} is not a backup id (like 20260131T020000Z-1a2b3c4d): list the destination's backups"
        )
    return datetime.strptime(match.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def is_backup_id(value: str) -> bool:
    return _BACKUP_ID.match(value) is not None


def checksum(key: bytes, name: str, version_id: str, value: str) -> str:
    """The keyed checksum of one version's value."""
    message = json.dumps([name, version_id, value], ensure_ascii=False).encode()
    return "hmac-sha256:" + hmac.new(key, message, hashlib.sha256).hexdigest()


class _Version(BaseModel):
    model_config = ConfigDict(frozen=True)

    version_id: str
    stages: tuple[str, ...]
    created_at: datetime | None = None


class ArchivedVersion(_Version):
    value: SecretStr


class ManifestVersion(_Version):
    checksum: str


V = TypeVar("V", bound=_Version)


class _Secret(BaseModel, Generic[V]):
    model_config = ConfigDict(frozen=True)

    name: str
    versions: tuple[V, ...]

    def at(self, stage: str) -> V | None:
        return next((v for v in self.versions if stage in v.stages), None)


class ArchivedSecret(_Secret[ArchivedVersion]):
    """A secret's versions with their values, inside the encrypted archive."""


class ManifestSecret(_Secret[ManifestVersion]):
    """A secret's versions with keyed checksums in place of values."""


class _Backup(BaseModel):
    """What the archive and its manifest both say: which backup, when, of what."""

    model_config = ConfigDict(frozen=True)

    backup_id: str
    created_at: datetime
    source: str
    stages: StageSelection


class Archive(_Backup):
    """The plaintext of a backup. Values are :class:`SecretStr`: a ``repr`` or a log line shows ``**********``."""

    format: Literal["secret-rotation-backup-archive/1"] = ARCHIVE_FORMAT
    checksum_key: SecretStr = Field(default_factory=lambda: SecretStr(base64.b64encode(os.urandom(32)).decode()))
    secrets: tuple[ArchivedSecret, ...]

    @property
    def key(self) -> bytes:
        return base64.b64decode(self.checksum_key.get_secret_value())

    def secret(self, name: str) -> ArchivedSecret:
        found = next((s for s in self.secrets if s.name == name), None)
        if found is None:
            raise BackupTampered(
                f"backup {self.backup_id} holds no secret {name!r}: check the name against its manifest"
            )
        return found

    def checksum_of(self, name: str, version: ArchivedVersion) -> str:
        return checksum(self.key, name, version.version_id, version.value.get_secret_value())

    def to_bytes(self) -> bytes:
        def plain(value: SecretStr) -> str:
            return value.get_secret_value()

        document = self.model_dump(mode="json")
        document["checksum_key"] = plain(self.checksum_key)
        for secret, dumped in zip(self.secrets, document["secrets"], strict=True):
            for version, out in zip(secret.versions, dumped["versions"], strict=True):
                out["value"] = plain(version.value)
        return json.dumps(document, ensure_ascii=False).encode()

    @classmethod
    def from_bytes(cls, data: bytes, backup_id: str) -> Archive:
        try:
            return cls.model_validate_json(data)
        except ValidationError:
            # The validation text would quote the document, values included: say only what is wrong.
            raise BackupTampered(
                f"the archive of backup {backup_id} decrypts but is not a backup archive of this format"
            ) from None


class Manifest(_Backup):
    """What a backup holds, without values: readable by anyone who may see the backup's folder."""

    format: Literal["secret-rotation-backup-manifest/1"] = MANIFEST_FORMAT
    recipients: tuple[str, ...]
    signer: str | None
    payload_sha256: str
    payload_bytes: int
    secrets: tuple[ManifestSecret, ...]

    @classmethod
    def of(cls, archive: Archive, payload: bytes, recipients: list[str], signer: str | None) -> Manifest:
        """The manifest of ``archive``, encrypted as ``payload`` to ``recipients``."""
        return cls(
            **{field: getattr(archive, field) for field in _Backup.model_fields},
            recipients=tuple(recipients),
            signer=signer,
            payload_sha256=hashlib.sha256(payload).hexdigest(),
            payload_bytes=len(payload),
            secrets=tuple(
                ManifestSecret(
                    name=s.name,
                    versions=tuple(
                        ManifestVersion(
                            version_id=v.version_id,
                            stages=v.stages,
                            created_at=v.created_at,
                            checksum=archive.checksum_of(s.name, v),
                        )
                        for v in s.versions
                    ),
                )
                for s in archive.secrets
            ),
        )

    def to_bytes(self) -> bytes:
        return self.model_dump_json(indent=2).encode()

    @classmethod
    def from_bytes(cls, data: bytes, backup_id: str) -> Manifest:
        try:
            manifest = cls.model_validate_json(data)
        except ValidationError as exc:
            raise BackupTampered(
                f"the manifest of backup {backup_id} is not a backup manifest ({exc.error_count()} "
                "problems): it was altered or is not from this tool"
            ) from None
        if manifest.backup_id != backup_id:
            raise BackupTampered(
                f"the manifest of backup {backup_id} names backup {manifest.backup_id}: it was copied or altered"
            )
        return manifest

    @property
    def version_count(self) -> int:
        return sum(len(s.versions) for s in self.secrets)

    def secret(self, name: str) -> ManifestSecret:
        found = next((s for s in self.secrets if s.name == name), None)
        if found is None:
            raise BadInput(f"backup {self.backup_id} holds no secret {name!r}: see its manifest for the names it holds")
        return found

    def check_payload(self, payload: bytes) -> None:
        """Refuse an archive that is not the one this manifest describes."""
        if hashlib.sha256(payload).hexdigest() != self.payload_sha256 or len(payload) != self.payload_bytes:
            raise BackupTampered(
                f"the archive of backup {self.backup_id} is not the one its manifest describes (SHA-256 differs): "
                "it was altered or replaced; use another backup"
            )

    def check_archive(self, archive: Archive) -> None:
        """Refuse a decrypted archive that does not hold exactly the manifest's versions and checksums."""
        expected = Manifest.of(archive, b"", list(self.recipients), self.signer)
        ours = self.model_dump(exclude={"payload_sha256", "payload_bytes"})
        theirs = expected.model_dump(exclude={"payload_sha256", "payload_bytes"})
        if ours != theirs:
            raise BackupTampered(
                f"backup {self.backup_id}: the manifest does not match the archive it sits beside (names, versions, "
                "stages, dates or checksums differ): the manifest was altered; use another backup"
            )
