"""Steps of backups and restores: write an encrypted backup, apply retention, verify a backup, plan a restore,
restore one secret (and undo it), check restored values against their keyed checksums, record a drill.

Every task takes references (store URIs, a destination URI, a backup id, key fingerprints, a gpg home) and returns
ids, names, counts and checksums' verdicts, never a value. Every task that reads a backup verifies it first
(manifest signature, the archive's SHA-256, decryption, the archive matching its manifest), so a backup altered
between the plan and the restore is refused before anything is written.

A *selection* URI names the secrets of a backup: a store URI whose secret name is an exact name, or a prefix ending
in ``*`` (``aws://prod/*?region=eu-west-1``, ``local:///srv/store.db?secret=*``). A restore target is written the
same way: the part of each name that the source's ``*`` matched is put in place of the target's ``*``
(``aws://prod/*`` restored into ``local:///tmp/s.db?secret=copy/*`` makes ``prod/db`` into ``copy/db``).
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
from dataclasses import dataclass

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, SecretStr

from errors import BadInput, CheckFailed, Conflict, NotFound, Refused
from redaction import register_secret
from stores import SecretDescription, SecretStore, SecretURI, Stage, open_store
from stores.errors import SecretNotFound
from targets.backup.archive import (
    Archive,
    ArchivedSecret,
    ArchivedVersion,
    Manifest,
    StageSelection,
    backup_time,
    checksum,
)
from targets.backup.destination import (
    Destination,
    manifest_name,
    open_destination,
    payload_name,
    signature_name,
)
from targets.backup.drills import DrillRecord, write_record
from targets.backup.openpgp import Keyring, SignatureInvalid, normalise_fingerprint
from targets.backup.retention import RetentionPolicy, expired
from tasks import retry_if_transient

_RETRY = {"retries": 3, "retry_delay_seconds": [1, 5, 15], "retry_condition_fn": retry_if_transient}


class Selection(BaseModel):
    """Secrets of one store location: every name starting with ``prefix``, or exactly one name."""

    model_config = ConfigDict(frozen=True)

    base: SecretURI
    prefix: str
    exact: bool

    @classmethod
    def parse(cls, uri: str) -> Selection:
        base = SecretURI.parse(uri)
        if "*" in base.name.rstrip("*") or base.name.count("*") > 1:
            raise BadInput(f"{uri!r}: a selection has at most one '*', at the end of the secret name (prod/*)")
        exact = not base.name.endswith("*")
        return cls(base=base, prefix="" if exact else base.name[:-1], exact=exact)

    @property
    def display(self) -> str:
        """The selection's canonical URI."""
        return self.base.display

    def uri_of(self, name: str) -> str:
        return open_store(self.base.model_copy(update={"name": name})).uri.display

    def names(self) -> list[str]:
        """The names selected, as the store lists them (without reading a value); none is :class:`NotFound`."""
        store = open_store(self.base)
        if self.exact:
            with contextlib.suppress(SecretNotFound):
                store.describe()
                return [self.base.name]
        elif found := [n for n in store.list() if n.startswith(self.prefix)]:
            return found
        raise NotFound(f"no secret matches {self.display}: check the store URI and the prefix")

    def target_of(self, name: str, source: Selection, count: int) -> str:
        """The store URI that ``name`` of a backup of ``source`` (``count`` secrets) is restored to."""
        if self.exact:
            if count > 1:
                raise BadInput(
                    f"a backup of {count} secrets cannot be restored into the one secret {self.base.display}: end the "
                    "target's secret name with '*' (for example local:///path/store.db?secret=*)"
                )
            return self.uri_of(self.base.name)
        return self.uri_of(self.prefix + name[len(source.prefix) :])


class BackupRef(BaseModel):
    """Which backup, where, and how to check it: ``signer`` (a fingerprint) requires a manifest signed by that key."""

    model_config = ConfigDict(frozen=True)

    destination: str
    backup_id: str
    gnupg_home: str | None = None
    signer: str | None = None


class BackupWritten(BaseModel):
    backup_id: str
    destination: str
    source: str
    secrets: int
    versions: int
    recipients: list[str]
    signer: str | None
    skipped: list[str] = []  # listed, then gone before they could be read

    @classmethod
    def of(cls, manifest: Manifest, destination: Destination, skipped: list[str] | None = None) -> BackupWritten:
        return cls(
            backup_id=manifest.backup_id,
            destination=destination.display,
            source=manifest.source,
            secrets=len(manifest.secrets),
            versions=manifest.version_count,
            recipients=list(manifest.recipients),
            signer=manifest.signer,
            skipped=skipped or [],
        )


class BackupFacts(BaseModel):
    """What a verified backup holds, names and counts only."""

    backup_id: str
    created_at: str
    source: str
    stages: StageSelection
    secrets: list[str]
    versions: int
    recipients: list[str]
    signer: str | None
    decrypted: bool


class RestoreAction(enum.StrEnum):
    CREATE = "create"  # the target secret does not exist: it is created
    UPDATE = "update"  # it exists with another CURRENT value: the backed-up value is staged and promoted
    UNCHANGED = "unchanged"  # its CURRENT value is the backed-up one already
    BLOCKED = "blocked"  # it cannot be restored now (``reason`` says why); nothing is written to it


class PlannedRestore(BaseModel):
    """One secret of a restore plan; the version ids are the target's before the restore (what an undo needs)."""

    model_config = ConfigDict(frozen=True)

    name: str
    target: str
    action: RestoreAction
    backup_version: str | None
    stages: tuple[Stage, ...]  # the stages whose backed-up values are written (and later checked)
    target_current: str | None = None
    target_previous: str | None = None
    reason: str | None = None


class RestorePlan(BaseModel):
    backup_id: str
    target: str
    secrets: list[PlannedRestore]

    @property
    def counts(self) -> dict[str, int]:
        return {a.value: sum(1 for s in self.secrets if s.action == a) for a in RestoreAction}

    @property
    def changes(self) -> list[PlannedRestore]:
        """The secrets the restore writes (created or updated), in the backup's order."""
        return [s for s in self.secrets if s.action in (RestoreAction.CREATE, RestoreAction.UPDATE)]

    @property
    def summary(self) -> str:
        return ", ".join(f"{n} {a}" for a, n in self.counts.items() if n) or "nothing"

    def refuse_blocked(self) -> None:
        """A restore writes all its secrets or none: one it cannot write now refuses the whole restore."""
        blocked = [s for s in self.secrets if s.action == RestoreAction.BLOCKED]
        if blocked:
            why = "; ".join(f"{s.target}: {s.reason}" for s in blocked)
            raise Conflict(
                f"restore of backup {self.backup_id} into {self.target} is refused, {len(blocked)} secret(s) are "
                f"blocked ({why}); nothing was written: deal with them, then restore again"
            )

    def to_markdown(self) -> str:
        """The plan as a person approves it: per secret what changes, and the version ids; never a value."""
        rows = [
            f"| `{s.name}` | `{s.target}` | **{s.action.value}** | {', '.join(s.stages) or '-'} | "
            f"`{s.target_current or '-'}` | {s.reason or ''} |"
            for s in self.secrets
        ]
        return "\n".join(
            [
                f"### Restore plan: backup `{self.backup_id}` into `{self.target}`",
                "",
                f"{self.summary}. Created secrets are deleted and updated ones reverted if the restore fails before "
                "it completes; a rejection writes nothing.",
                "",
                "| secret in the backup | target | action | stages written | target's CURRENT before | why |",
                "|---|---|---|---|---|---|",
                *rows,
            ]
        )


class RestoredSecret(BaseModel):
    target: str
    action: RestoreAction
    version_id: str | None  # the target's CURRENT version after the restore
    already_restored: bool


class RestoreCheck(BaseModel):
    backup_id: str
    target: str
    secrets_checked: int
    versions_checked: int


class RestoreMismatch(CheckFailed):
    """A restored value does not match the checksum the backup recorded for it."""


@dataclass(frozen=True)
class BackupRequest:
    """A backup's inputs, each checked: nothing has been written when this exists."""

    selection: Selection
    destination: Destination
    keyring: Keyring
    recipients: list[str]
    signer: str | None


def check_backup_request(
    source: str, destination: str, recipients: list[str], signing_key: str | None, gnupg_home: str | None
) -> BackupRequest:
    """Refuse bad input (a bad URI, a missing or unusable key, an unwritable destination) before anything is written."""
    selection = Selection.parse(source)
    target = open_destination(destination)
    if not recipients:
        raise BadInput("a backup needs at least one recipient: give the fingerprint of an administrator's OpenPGP key")
    keyring = Keyring(gnupg_home)
    fingerprints = list(dict.fromkeys(keyring.check_recipient(r) for r in recipients))
    signer = keyring.check_signer(signing_key) if signing_key else None
    target.check_writable()
    return BackupRequest(selection, target, keyring, fingerprints, signer)


def _register(archive: Archive) -> None:
    register_secret(archive.checksum_key.get_secret_value())
    for secret in archive.secrets:
        for version in secret.versions:
            register_secret(version.value.get_secret_value())


def _archived(store: SecretStore, name: str, stages: StageSelection) -> ArchivedSecret:
    versions = []
    for info in store.describe(dated=True).versions:  # the archive keeps each version's date
        if Stage.CURRENT in info.stages or (stages == "all" and info.stages):
            value = register_secret(store.read_version(info.version_id))
            versions.append(
                ArchivedVersion(
                    version_id=info.version_id,
                    stages=tuple(s.value for s in info.stages),
                    created_at=info.created_at,
                    value=SecretStr(value),
                )
            )
    return ArchivedSecret(name=name, versions=tuple(versions))


def _facts(manifest: Manifest, decrypted: bool) -> BackupFacts:
    return BackupFacts(
        backup_id=manifest.backup_id,
        created_at=manifest.created_at.isoformat(),
        source=manifest.source,
        stages=manifest.stages,
        secrets=[s.name for s in manifest.secrets],
        versions=manifest.version_count,
        recipients=list(manifest.recipients),
        signer=manifest.signer,
        decrypted=decrypted,
    )


@task(cache_policy=NO_CACHE, **_RETRY)
def write_backup(
    source: str,
    destination: str,
    recipients: list[str],
    stages: StageSelection,
    backup_id: str,
    signing_key: str | None = None,
    gnupg_home: str | None = None,
) -> BackupWritten:
    """Read every selected secret and write backup ``backup_id``: archive, manifest signature, then manifest.

    Already written (its manifest exists): nothing is read or written again.
    """
    request = check_backup_request(source, destination, recipients, signing_key, gnupg_home)
    target = request.destination
    if target.exists(manifest_name(backup_id)):
        return BackupWritten.of(Manifest.from_bytes(target.read(manifest_name(backup_id)), backup_id), target)
    archived, skipped = [], []
    for name in request.selection.names():
        try:
            archived.append(_archived(open_store(request.selection.uri_of(name)), name, stages))
        except SecretNotFound:
            skipped.append(name)
    archive = Archive(
        backup_id=backup_id,
        created_at=backup_time(backup_id),
        source=request.selection.display,
        stages=stages,
        secrets=tuple(archived),
    )
    register_secret(archive.checksum_key.get_secret_value())
    payload = request.keyring.encrypt(archive.to_bytes(), request.recipients)
    manifest = Manifest.of(archive, payload, request.recipients, request.signer)
    document = manifest.to_bytes()
    target.write(payload_name(backup_id), payload)
    if request.signer:
        target.write(signature_name(backup_id), request.keyring.sign(document, request.signer))
    target.write(manifest_name(backup_id), document)
    return BackupWritten.of(manifest, target, skipped)


@task(cache_policy=NO_CACHE, **_RETRY)
def apply_retention(destination: str, source: str, keep_daily: int, keep_monthly: int) -> list[str]:
    """Delete the backups of ``source`` the policy does not keep (manifest first, so none is left half-listed); their
    ids. Backups of other sources sharing the destination are theirs to keep: each source has its own allowance."""
    policy = RetentionPolicy(keep_daily=keep_daily, keep_monthly=keep_monthly)
    target = open_destination(destination)
    ours = [b for b in target.backups() if Manifest.from_bytes(target.read(manifest_name(b)), b).source == source]
    doomed = expired({b: backup_time(b) for b in ours}, policy)
    for backup_id in doomed:
        for name in (manifest_name(backup_id), signature_name(backup_id), payload_name(backup_id)):
            target.delete(name)
    return doomed


@task(cache_policy=NO_CACHE, **_RETRY)
def find_latest_backup(destination: str) -> str:
    """The id of the newest complete backup at ``destination``."""
    target = open_destination(destination)
    backups = target.backups()
    if not backups:
        raise NotFound(f"{target.display} holds no backup: run rotate backup first, or check the destination")
    return backups[-1]


# A restore opens its backup once per secret. Verifying the signature, decrypting and checking the archive take
# tens of milliseconds for 500 secrets, and their outcome depends only on the bytes read and the keyring: the newest
# backup opened is remembered by the digest of those bytes, so a changed byte is checked afresh. Its plaintext stays
# in this process's memory, where the restore puts the values anyway.
_opened: dict[tuple[str | None, str], tuple[str | None, Manifest, Archive]] = {}


def open_backup(backup: BackupRef, decrypt: bool = True) -> tuple[Manifest, Archive | None]:
    """The manifest and (with ``decrypt``) the archive of a backup, both verified; refused if anything is off.

    Without ``decrypt`` (where no recipient's secret key lives, e.g. the backup host), the archive is checked
    against the manifest's SHA-256 and its recipients against the manifest's.
    """
    target = open_destination(backup.destination)
    keyring = Keyring(backup.gnupg_home)
    what = f"backup {backup.backup_id} at {target.display}"
    backup_time(backup.backup_id)
    document = target.read(manifest_name(backup.backup_id))
    signed = signature_name(backup.backup_id)
    signature = target.read(signed) if target.exists(signed) else None
    payload = target.read(payload_name(backup.backup_id))
    digest = "/".join(hashlib.sha256(part).hexdigest() for part in (document, signature or b"", payload))
    remembered = _opened.get((backup.gnupg_home, digest)) if decrypt else None
    if remembered is not None:
        signed_by, manifest, archive = remembered
    else:
        signed_by = keyring.verify(document, signature, f"the manifest of {what}") if signature else None
        manifest = Manifest.from_bytes(document, backup.backup_id)
        if manifest.signer != signed_by:
            raise SignatureInvalid(
                f"the manifest of {what} names signer {manifest.signer or 'none'} but is signed by "
                f"{signed_by or 'nobody'}: the manifest or its signature was altered, removed or replaced; "
                "use another backup"
            )
        manifest.check_payload(payload)
    if backup.signer and normalise_fingerprint(backup.signer) != signed_by:
        raise SignatureInvalid(
            f"the manifest of {what} is signed by {signed_by or 'nobody'}, not by the required signer "
            f"{normalise_fingerprint(backup.signer)}: it was not written by your backup host; use another backup"
        )
    if not decrypt:
        keyring.check_addressed(payload, list(manifest.recipients), what)
        return manifest, None
    if remembered is None:
        archive = Archive.from_bytes(keyring.decrypt(payload, what), backup.backup_id)
        _register(archive)
        manifest.check_archive(archive)
        _opened.clear()
        _opened[(backup.gnupg_home, digest)] = (signed_by, manifest, archive)
    return manifest, archive


@task(cache_policy=NO_CACHE, **_RETRY)
def verify_backup(backup: BackupRef, decrypt: bool = True) -> BackupFacts:
    """Check a backup (signature, SHA-256, decryption, every checksum against the archive); its names and counts."""
    manifest, archive = open_backup(backup, decrypt)
    return _facts(manifest, archive is not None)


def _description(store: SecretStore) -> SecretDescription | None:
    try:
        return store.describe()
    except SecretNotFound:
        return None


def _holds(
    store: SecretStore, version_id: str | None, archive: Archive, name: str, backed_up: ArchivedVersion | None
) -> bool:
    """Whether version ``version_id`` of ``store`` holds the value ``backed_up`` (by its keyed checksum)."""
    if version_id is None or backed_up is None:
        return False
    value = register_secret(store.read_version(version_id))
    return checksum(archive.key, name, backed_up.version_id, value) == archive.checksum_of(name, backed_up)


def _plan_one(archive: Archive, secret: ArchivedSecret, target: str) -> PlannedRestore:
    current = secret.at(Stage.CURRENT)
    if current is None:
        return PlannedRestore(
            name=secret.name,
            target=target,
            action=RestoreAction.BLOCKED,
            backup_version=None,
            stages=(),
            reason="the backup holds no CURRENT version of it",
        )
    store = open_store(target)
    found = _description(store)
    if found is None:
        previous = secret.at(Stage.PREVIOUS)
        return PlannedRestore(
            name=secret.name,
            target=target,
            action=RestoreAction.CREATE,
            backup_version=current.version_id,
            stages=(Stage.PREVIOUS, Stage.CURRENT) if previous else (Stage.CURRENT,),
        )
    facts = {
        "name": secret.name,
        "target": target,
        "backup_version": current.version_id,
        "target_current": found.version_at(Stage.CURRENT),
        "target_previous": found.version_at(Stage.PREVIOUS),
    }
    if _holds(store, found.version_at(Stage.CURRENT), archive, secret.name, current):
        return PlannedRestore(action=RestoreAction.UNCHANGED, stages=(Stage.CURRENT,), **facts)
    pending = found.version_at(Stage.PENDING)
    if pending is not None:
        return PlannedRestore(
            action=RestoreAction.BLOCKED,
            stages=(),
            reason=f"version {pending} holds its PENDING stage (a rotation in progress): finish or roll it back",
            **facts,
        )
    return PlannedRestore(action=RestoreAction.UPDATE, stages=(Stage.CURRENT,), **facts)


@task(cache_policy=NO_CACHE, **_RETRY)
def plan_restore(backup: BackupRef, target: str) -> RestorePlan:
    """What restoring ``backup`` into the selection ``target`` would do to each secret (no values, nothing written)."""
    manifest, archive = open_backup(backup)
    assert archive is not None
    source, into = Selection.parse(manifest.source), Selection.parse(target)
    count = len(archive.secrets)
    return RestorePlan(
        backup_id=backup.backup_id,
        target=target,
        secrets=[_plan_one(archive, s, into.target_of(s.name, source, count)) for s in archive.secrets],
    )


@task(cache_policy=NO_CACHE)
def show_restore_plan(plan: RestorePlan, restore_id: str) -> str:
    """Publish the plan as a markdown artifact of the run, for the approver; the artifact's key."""
    key = f"restore-{restore_id}-plan"
    create_markdown_artifact(key=key, markdown=plan.to_markdown(), description=f"restore plan: {plan.summary}")
    return key


@task(cache_policy=NO_CACHE, **_RETRY)
def restore_secret(backup: BackupRef, planned: PlannedRestore, restore_id: str) -> RestoredSecret:
    """Write one planned secret's backed-up value(s) into its target; ``restore_id`` keys the version it stages.

    Already restored (the target's stages hold the backed-up values the plan writes): nothing is written. A target
    that changed since the plan (created, deleted, or given another CURRENT by someone else) is refused as a conflict.
    """
    _, archive = open_backup(backup)
    assert archive is not None
    secret = archive.secret(planned.name)
    current = secret.at(Stage.CURRENT)
    previous = secret.at(Stage.PREVIOUS) if Stage.PREVIOUS in planned.stages else None
    store = open_store(planned.target)
    found = _description(store)

    def holds(stage: Stage, version: ArchivedVersion | None) -> bool:
        return _holds(store, found.version_at(stage) if found else None, archive, secret.name, version)

    def restored(version_id: str | None, already: bool) -> RestoredSecret:
        return RestoredSecret(
            target=planned.target, action=planned.action, version_id=version_id, already_restored=already
        )

    if holds(Stage.CURRENT, current) and (previous is None or holds(Stage.PREVIOUS, previous)):
        return restored(found.version_at(Stage.CURRENT) if found else None, True)
    what = f"{planned.target} (from {planned.name} in backup {backup.backup_id})"
    if planned.action not in (RestoreAction.CREATE, RestoreAction.UPDATE) or current is None:
        raise Conflict(f"{what} was planned as {planned.action.value} and has changed since: make a new plan")
    if planned.action == RestoreAction.CREATE:
        if found is None:
            version_id = store.create((previous or current).value.get_secret_value())
            if previous is None:
                return restored(version_id, False)
        elif not holds(Stage.CURRENT, previous):  # not the first version this restore created before it stopped
            raise Conflict(f"{what} was created by someone else since the plan: make a new plan")
    elif found is None:
        raise Conflict(f"{what} was deleted since the plan: make a new plan")
    elif found.version_at(Stage.CURRENT) not in (planned.target_current, restore_id):
        raise Conflict(f"{what} was given another CURRENT version since the plan: make a new plan")
    store.stage(current.value.get_secret_value(), restore_id)
    store.promote(restore_id)
    return restored(restore_id, False)


@task(cache_policy=NO_CACHE, **_RETRY)
def undo_restore_secret(
    secret: str,
    rotation_id: str,
    *,
    action: RestoreAction,
    previous_version: str | None = None,
    target: str | None = None,
    name: str | None = None,
    backup: BackupRef | dict[str, str | None] | None = None,
) -> str:
    """Undo :func:`restore_secret` for restore ``rotation_id`` on ``target`` (the planned secret's URI; default
    ``secret``, which the runbook core fills with its rotation's secret); what it did.

    An update is reverted from the store's own versions: CURRENT goes back to the version the restore made
    PREVIOUS, PREVIOUS back to ``previous_version`` (the plan's ``target_previous``), and the restored version is
    discarded. A created secret is deleted, once its CURRENT is seen to hold a value the restore wrote (secret
    ``name`` of ``backup``, by its keyed checksum) and it has no more versions than the restore wrote: a secret
    someone else created or changed meanwhile is never deleted. Already undone, or nothing written: no change.
    """
    store = open_store(target or secret)
    if action == RestoreAction.CREATE:
        found = _description(store)
        if found is None:
            return "nothing to undo"
        if backup is None or name is None:
            raise BadInput(
                f"undoing the creation of {store.uri.display} needs the backup and the secret's name in it, to check "
                "that what it deletes is what the restore wrote; the journal may have been edited"
            )
        _, archive = open_backup(BackupRef.model_validate(backup))
        assert archive is not None
        restored = archive.secret(name)
        written = [v for v in (restored.at(Stage.CURRENT), restored.at(Stage.PREVIOUS)) if v is not None]
        current = found.version_at(Stage.CURRENT)
        if len(found.versions) > len(written) or not any(_holds(store, current, archive, name, v) for v in written):
            raise Refused(
                f"{store.uri.display} changed after restore {rotation_id} created it (another value or another "
                "version), so it was not deleted: check who wrote it, and delete it with the secret manager's own tool "
                "if it must go"
            )
        store.delete()
        return "deleted"
    if action == RestoreAction.UPDATE:
        found = _description(store)
        if found is None or rotation_id not in {v.version_id for v in found.versions}:
            return "nothing to undo"
        store.revert(rotation_id, previous_version)
        store.discard(rotation_id)
        return "reverted"
    return "nothing written"


@task(cache_policy=NO_CACHE, **_RETRY)
def verify_restored(backup: BackupRef, plan: RestorePlan) -> RestoreCheck:
    """Check every value the plan wrote (or found unchanged) against the backup's keyed checksum."""
    manifest, archive = open_backup(backup)
    assert archive is not None
    wrong: list[str] = []
    secrets = versions = 0
    for planned in plan.secrets:
        if planned.action == RestoreAction.BLOCKED:
            continue
        secrets += 1
        backed_up = manifest.secret(planned.name)
        store = open_store(planned.target)
        for stage in planned.stages:
            versions += 1
            expected = backed_up.at(stage)
            try:
                value = register_secret(store.read(stage))
            except NotFound:
                wrong.append(f"{planned.target} ({stage.value} missing)")
                continue
            if expected is None or checksum(archive.key, planned.name, expected.version_id, value) != expected.checksum:
                wrong.append(f"{planned.target} ({stage.value})")
    if wrong:
        raise RestoreMismatch(
            f"{len(wrong)} restored value(s) do not match backup {backup.backup_id}'s checksums: {', '.join(wrong)}"
        )
    return RestoreCheck(
        backup_id=backup.backup_id, target=plan.target, secrets_checked=secrets, versions_checked=versions
    )


@task(cache_policy=NO_CACHE, **_RETRY)
def record_drill(destination: str, record: DrillRecord) -> str:
    """Write a drill's result beside the backups (ids and counts only); the record's name."""
    return write_record(open_destination(destination), record)
