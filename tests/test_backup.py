"""Backups and restores with real parts: gpg keys made at test time, AWS Secrets Manager and S3 (with KMS) on
moto_server, local stores, and a Prefect server recording every task run."""

from __future__ import annotations

import hashlib
import json
import tempfile
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlencode

import boto3
import pytest

import redaction
from errors import Conflict, Refused
from flows.backup import BackupPolicy, backup_secrets
from flows.drill import DrillFailed, restore_drill
from stores import SecretStore, Stage, open_store
from targets.backup.archive import BackupTampered, Manifest, new_id
from targets.backup.destination import manifest_name, open_destination, payload_name, signature_name
from targets.backup.drills import latest_record
from targets.backup.openpgp import NotARecipient, SignatureInvalid
from targets.backup.retention import RetentionPolicy, expired
from tasks.backup import (
    BackupRef,
    RestoreAction,
    apply_retention,
    plan_restore,
    restore_secret,
    undo_restore_secret,
    verify_backup,
    verify_restored,
    write_backup,
)
from tests.fixtures.gpg import GpgKeys
from tests.leaks import canary, error_text


def _aws(moto_server: str, name: str) -> str:
    return f"aws://{name}?{urlencode({'region': 'us-east-1', 'endpoint_url': moto_server})}"


def _rotate(store: SecretStore, value: str) -> str:
    """Give ``store`` a new CURRENT value the way a rotation does; the old one becomes PREVIOUS."""
    rotation_id = str(uuid.uuid4())
    store.stage(value, rotation_id)
    store.promote(rotation_id)
    return rotation_id


def _local_secrets(path: Path, values: dict[str, str]) -> dict[str, SecretStore]:
    stores = {name: open_store(f"local://{path}?secret={name}") for name in values}
    for name, value in values.items():
        stores[name].create(value)
    return stores


def _backup(source: str, destination: Path | str, keys: GpgKeys, signed: bool = True, **kwargs: object) -> BackupRef:
    backup_id = kwargs.pop("backup_id", None) or new_id()
    write_backup(
        source,
        str(destination),
        kwargs.pop("recipients", [keys.admin]),
        kwargs.pop("stages", "current"),
        backup_id,
        keys.signer if signed else None,
        str(keys.home),
    )
    return BackupRef(
        destination=str(destination),
        backup_id=backup_id,
        gnupg_home=str(keys.home),
        signer=keys.signer if signed else None,
    )


def _no_values(text: str | bytes, values: list[str]) -> None:
    data = text.encode() if isinstance(text, str) else text
    assert [v for v in values if v.encode() in data] == []


@pytest.fixture
def s3_destination(moto_server: str) -> Callable[[], tuple[str, str]]:
    """``make()``: a new bucket and KMS key on moto_server; (destination URI, KMS key id)."""

    def make() -> tuple[str, str]:
        bucket = f"backups-{uuid.uuid4().hex[:10]}"
        boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1").create_bucket(Bucket=bucket)
        kms = boto3.client("kms", endpoint_url=moto_server, region_name="us-east-1")
        key_id = kms.create_key(Description="secret backups")["KeyMetadata"]["KeyId"]
        options = urlencode({"region": "us-east-1", "endpoint_url": moto_server, "kms_key": key_id})
        return f"s3://{bucket}/secrets?{options}", key_id

    return make


def test_round_trip_from_aws_secrets_manager_into_a_local_store(
    prefect_server, moto_server, gpg_keys: GpgKeys, s3_destination, local_store_factory, caplog
) -> None:
    prefix = f"backup-{uuid.uuid4().hex[:8]}"
    values = {f"{prefix}/svc{i}": canary() for i in range(3)}
    stores = {name: open_store(_aws(moto_server, name)) for name in values}
    for name, value in values.items():
        stores[name].create(value)
    older = values[f"{prefix}/svc0"]
    values[f"{prefix}/svc0"] = canary()
    _rotate(stores[f"{prefix}/svc0"], values[f"{prefix}/svc0"])
    destination, kms_key = s3_destination()

    summary = backup_secrets(
        _aws(moto_server, f"{prefix}/*"),
        destination,
        [gpg_keys.admin],
        policy=BackupPolicy(stages="all"),
        signing_key=gpg_keys.signer,
        gnupg_home=str(gpg_keys.home),
    )
    assert (summary["secrets"], summary["versions"], summary["deleted"]) == (3, 4, [])
    every_value = [*values.values(), older]
    assert all(redaction.redact(v) == redaction.REDACTED for v in every_value)  # the leak scan looks for them

    s3 = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    bucket = destination.removeprefix("s3://").split("/")[0]
    for name in (payload_name, manifest_name, signature_name):
        head = s3.head_object(Bucket=bucket, Key=f"secrets/{name(summary['backup_id'])}")
        assert head["ServerSideEncryption"] == "aws:kms"
        assert kms_key in head["SSEKMSKeyId"]
    manifest = open_destination(destination).read(manifest_name(summary["backup_id"]))
    _no_values(manifest, every_value)
    assert sorted(s["name"] for s in json.loads(manifest)["secrets"]) == sorted(values)
    assert all(v["created_at"] for s in json.loads(manifest)["secrets"] for v in s["versions"])  # AWS's dates

    backup = BackupRef(
        destination=destination, backup_id=summary["backup_id"], gnupg_home=str(gpg_keys.home), signer=gpg_keys.signer
    )
    file = local_store_factory().uri.location
    target = f"local://{file}?secret=restored/*"
    plan = plan_restore(backup, target)
    _no_values(plan.model_dump_json(), every_value)
    assert {p.target.partition("secret=")[2]: p.action for p in plan.secrets} == {
        f"restored/svc{i}": RestoreAction.CREATE for i in range(3)
    }
    restore_id = str(uuid.uuid4())
    results = [restore_secret(backup, planned, restore_id) for planned in plan.secrets]
    assert not any(r.already_restored for r in results)
    assert [restore_secret(backup, p, restore_id).already_restored for p in plan.secrets] == [True] * 3
    check = verify_restored(backup, plan)
    assert (check.secrets_checked, check.versions_checked) == (3, 4)
    for i in range(3):
        restored = open_store(f"local://{file}?secret=restored/svc{i}")
        assert restored.read(Stage.CURRENT) == values[f"{prefix}/svc{i}"]
    assert open_store(f"local://{file}?secret=restored/svc0").read(Stage.PREVIOUS) == older
    assert "Backup " in caplog.text  # the flow's and the tasks' log lines were captured, and hold no value
    _no_values(caplog.text, every_value)


def test_a_restore_plan_lists_changes_without_values_and_an_update_is_undone(
    prefect_server, gpg_keys: GpgKeys, tmp_path: Path
) -> None:
    values = {name: canary() for name in ("same", "changed", "missing", "rotating")}
    _local_secrets(tmp_path / "source.db", values)
    backup = _backup(f"local://{tmp_path / 'source.db'}?secret=*", tmp_path / "backups", gpg_keys)
    others = {name: canary() for name in ("changed", "rotating")}
    target = _local_secrets(tmp_path / "target.db", {"same": values["same"], **others})
    _rotate(target["changed"], canary())  # so that the undo must put a PREVIOUS version back as well
    target["rotating"].stage(canary(), str(uuid.uuid4()))  # a rotation in progress
    before = {name: store.describe() for name, store in target.items()}

    plan = plan_restore(backup, f"local://{tmp_path / 'target.db'}?secret=*")
    assert {p.name: p.action for p in plan.secrets} == {
        "same": RestoreAction.UNCHANGED,
        "changed": RestoreAction.UPDATE,
        "missing": RestoreAction.CREATE,
        "rotating": RestoreAction.BLOCKED,
    }
    assert plan.counts == {"create": 1, "update": 1, "unchanged": 1, "blocked": 1}
    assert "PENDING" in next(p.reason for p in plan.secrets if p.name == "rotating")
    _no_values(plan.model_dump_json(), [*values.values(), *others.values()])
    assert {name: store.describe() for name, store in target.items()} == before  # planning wrote nothing

    restore_id = str(uuid.uuid4())
    for planned in plan.secrets:
        if planned.action in (RestoreAction.CREATE, RestoreAction.UPDATE):
            restore_secret(backup, planned, restore_id)
    verify_restored(backup, plan)
    assert target["changed"].read(Stage.CURRENT) == values["changed"]
    assert open_store(f"local://{tmp_path / 'target.db'}?secret=missing").read(Stage.CURRENT) == values["missing"]

    changed = next(p for p in plan.secrets if p.name == "changed")
    undo = {"action": changed.action.value, "previous_version": changed.target_previous, "target": changed.target}
    # As the runbook core calls it: the rotation's secret (here the whole restore's target), its id, the undo's own.
    whole = f"local://{tmp_path / 'target.db'}?secret=*"
    assert undo_restore_secret(whole, restore_id, **undo) == "reverted"
    assert target["changed"].describe() == before["changed"]
    assert undo_restore_secret(whole, restore_id, **undo) == "nothing to undo"
    assert target["changed"].describe() == before["changed"]
    created = next(p for p in plan.secrets if p.name == "missing")
    undo = {"action": created.action.value, "target": created.target, "name": created.name, "backup": backup}
    open_store(created.target).stage(canary(), str(uuid.uuid4()))  # someone else's rotation began on it meanwhile
    kept = open_store(created.target).describe()
    with pytest.raises(Refused, match="was not deleted"):
        undo_restore_secret.fn(whole, restore_id, **undo)
    assert open_store(created.target).describe() == kept
    open_store(created.target).discard(kept.version_at(Stage.PENDING))
    assert undo_restore_secret(whole, restore_id, **undo) == "deleted"
    assert undo_restore_secret(whole, restore_id, **undo) == "nothing to undo"
    assert created.name not in open_store(created.target).list()


def _flip_payload_byte(destination: Path, backup_id: str) -> None:
    path = destination / payload_name(backup_id)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _edit_manifest(destination: Path, backup_id: str) -> None:
    path = destination / manifest_name(backup_id)
    document = json.loads(path.read_text())
    version = document["secrets"][0]["versions"][0]
    version["checksum"] = "hmac-sha256:" + hashlib.sha256(b"forged").hexdigest()
    path.write_text(json.dumps(document, indent=2))


def _remove_signature(destination: Path, backup_id: str) -> None:
    (destination / signature_name(backup_id)).unlink()


@pytest.mark.parametrize(
    ("tamper", "signed", "refusal", "says"),
    [
        (_flip_payload_byte, True, BackupTampered, "SHA-256 differs"),
        (_edit_manifest, True, SignatureInvalid, "does not verify"),
        (_remove_signature, True, SignatureInvalid, "signed by nobody"),
        (_edit_manifest, False, BackupTampered, "does not match the archive"),
    ],
    ids=["payload-altered", "signed-manifest-altered", "signature-removed", "unsigned-manifest-altered"],
)
def test_a_tampered_backup_is_refused_and_nothing_is_written(
    prefect_server, gpg_keys: GpgKeys, tmp_path: Path, tamper, signed: bool, refusal: type[Exception], says: str
) -> None:
    values = {f"app/{i}": canary() for i in range(2)}
    _local_secrets(tmp_path / "source.db", values)
    backup = _backup(f"local://{tmp_path / 'source.db'}?secret=app/*", tmp_path / "backups", gpg_keys, signed=signed)
    target = f"local://{tmp_path / 'target.db'}?secret=*"
    plan = plan_restore(backup, target)  # made before the backup was altered
    tamper(tmp_path / "backups", backup.backup_id)

    for attempt in (
        lambda: plan_restore.fn(backup, target),
        lambda: restore_secret.fn(backup, plan.secrets[0], str(uuid.uuid4())),
        lambda: verify_backup.fn(backup),
    ):
        with pytest.raises(refusal) as refused:
            attempt()
        assert says in str(refused.value)
        _no_values(error_text(refused.value), list(values.values()))
    assert not (tmp_path / "target.db").exists()


def test_a_backup_encrypted_to_another_key_is_refused_naming_its_recipients(
    prefect_server, gpg_keys: GpgKeys, tmp_path: Path
) -> None:
    values = {"api-token": canary()}
    _local_secrets(tmp_path / "source.db", values)
    backup = _backup(
        f"local://{tmp_path / 'source.db'}?secret=*", tmp_path / "backups", gpg_keys, recipients=[gpg_keys.outsider]
    )
    assert verify_backup(backup, decrypt=False).recipients == [gpg_keys.outsider]

    with pytest.raises(NotARecipient) as refused:
        plan_restore(backup, f"local://{tmp_path / 'target.db'}?secret=*")
    message = str(refused.value)
    assert gpg_keys.outsider in message and "Someone Else" in message
    assert "holds none of their secret keys" in message
    _no_values(error_text(refused.value), list(values.values()))
    assert not (tmp_path / "target.db").exists()


def test_the_restore_drill_passes_then_detects_a_corrupted_backup(
    prefect_server, gpg_keys: GpgKeys, tmp_path: Path, caplog
) -> None:
    values = {f"svc/{i}": canary() for i in range(4)}
    stores = _local_secrets(tmp_path / "source.db", values)
    _rotate(stores["svc/0"], canary())
    destination = tmp_path / "backups"
    backup_secrets(
        f"local://{tmp_path / 'source.db'}?secret=svc/*",
        str(destination),
        [gpg_keys.admin],
        policy=BackupPolicy(stages="all"),
        signing_key=gpg_keys.signer,
        gnupg_home=str(gpg_keys.home),
    )
    scratch_before = set(Path(tempfile.gettempdir()).glob("rotate-drill-*"))

    passed = restore_drill(str(destination), signer=gpg_keys.signer, gnupg_home=str(gpg_keys.home))
    assert (passed["result"], passed["secrets_checked"], passed["versions_checked"]) == ("passed", 4, 5)
    record = latest_record(open_destination(str(destination)))
    assert record is not None and record.result == "passed" and record.backup_id == passed["backup_id"]

    latest = open_destination(str(destination)).backups()[-1]
    _flip_payload_byte(destination, latest)
    with pytest.raises(DrillFailed, match="SHA-256 differs"):
        restore_drill(str(destination), signer=gpg_keys.signer, gnupg_home=str(gpg_keys.home))
    record = latest_record(open_destination(str(destination)))
    assert record is not None and (record.result, record.backup_id) == ("failed", latest)
    assert "SHA-256 differs" in (record.reason or "")
    assert set(Path(tempfile.gettempdir()).glob("rotate-drill-*")) == scratch_before  # scratch stores destroyed
    drills = list((destination / "drills").iterdir())
    assert len(drills) == 2
    for path in drills:
        _no_values(path.read_bytes(), list(values.values()))
    assert "Restore drill" in caplog.text and "failed" in caplog.text
    _no_values(caplog.text, list(values.values()))


def test_backup_files_are_private_to_their_owner(prefect_server, gpg_keys: GpgKeys, tmp_path: Path) -> None:
    _local_secrets(tmp_path / "source.db", {"one": canary()})
    backup = _backup(f"local://{tmp_path / 'source.db'}?secret=one", tmp_path / "backups" / "nested", gpg_keys)
    folder = tmp_path / "backups" / "nested"
    assert (folder.stat().st_mode & 0o777, folder.parent.stat().st_mode & 0o777) == (0o700, 0o700)
    files = sorted(p.name for p in folder.iterdir())
    assert files == sorted(f(backup.backup_id) for f in (manifest_name, payload_name, signature_name))
    assert {(folder / f).stat().st_mode & 0o777 for f in files} == {0o600}


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_retention_keeps_the_newest_backup_of_the_last_days_and_months() -> None:
    backups = {
        "jan-10": _at("2026-01-10T02:00"),
        "jan-31": _at("2026-01-31T02:00"),
        "feb-27": _at("2026-02-27T02:00"),
        "feb-28-early": _at("2026-02-28T01:00"),
        "feb-28": _at("2026-02-28T02:00"),
        "mar-01": _at("2026-03-01T02:00"),
        "mar-02-early": _at("2026-03-02T01:00"),
        "mar-02": _at("2026-03-02T02:00"),
    }
    # Daily keeps mar-02, mar-01, feb-28; monthly keeps the newest of March, February and January.
    assert expired(backups, RetentionPolicy(keep_daily=3, keep_monthly=3)) == [
        "jan-10",
        "feb-27",
        "feb-28-early",
        "mar-02-early",
    ]
    assert expired(backups, RetentionPolicy(keep_daily=1, keep_monthly=0)) == sorted(
        set(backups) - {"mar-02"}, key=backups.__getitem__
    )
    assert expired(backups, RetentionPolicy(keep_daily=30, keep_monthly=12)) == ["feb-28-early", "mar-02-early"]


def test_applying_retention_deletes_every_file_of_the_expired_backups(
    prefect_server, gpg_keys: GpgKeys, tmp_path: Path
) -> None:
    _local_secrets(tmp_path / "source.db", {"one": canary()})
    _local_secrets(tmp_path / "other.db", {"two": canary()})
    destination = tmp_path / "backups"
    days = ("2026-01-15T02:00", "2026-02-10T02:00", "2026-02-11T02:00", "2026-02-12T02:00")
    ids, others = [new_id(_at(day)) for day in days], [new_id(_at(day)) for day in days]
    for backup_id, other_id in zip(ids, others, strict=True):
        _backup(f"local://{tmp_path / 'source.db'}?secret=one", destination, gpg_keys, backup_id=backup_id)
        _backup(f"local://{tmp_path / 'other.db'}?secret=two", destination, gpg_keys, backup_id=other_id)
    target = open_destination(str(destination))
    source = Manifest.from_bytes(target.read(manifest_name(ids[0])), ids[0]).source

    # Another store's backups in the same folder, on the same days, neither count against it nor are deleted.
    assert apply_retention(str(destination), source, 2, 2) == [ids[1]]
    assert target.backups() == sorted([ids[0], ids[2], ids[3], *others])
    assert not any(p.name.startswith(ids[1]) for p in destination.iterdir())
    assert apply_retention(str(destination), source, 2, 2) == []


def test_a_restore_that_stopped_half_way_finishes_and_one_overtaken_by_another_writer_is_refused(
    prefect_server, gpg_keys: GpgKeys, tmp_path: Path
) -> None:
    older, newer = canary(), canary()
    (source,) = _local_secrets(tmp_path / "source.db", {"db": older}).values()
    _rotate(source, newer)
    backup = _backup(f"local://{tmp_path / 'source.db'}?secret=*", tmp_path / "backups", gpg_keys, stages="all")
    plan = plan_restore(backup, f"local://{tmp_path / 'target.db'}?secret=*")
    (planned,) = plan.secrets
    assert (planned.action, planned.stages) == (RestoreAction.CREATE, (Stage.PREVIOUS, Stage.CURRENT))

    # The restore created the secret with its PREVIOUS value, then its worker died before staging CURRENT.
    target = open_store(planned.target)
    target.create(older)
    restore_id = str(uuid.uuid4())
    finished = restore_secret(backup, planned, restore_id)
    assert (finished.already_restored, finished.version_id) == (False, restore_id)
    assert (target.read(Stage.CURRENT), target.read(Stage.PREVIOUS)) == (newer, older)
    assert verify_restored(backup, plan).versions_checked == 2

    (stale,) = plan_restore(backup, f"local://{tmp_path / 'other.db'}?secret=*").secrets
    elsewhere = open_store(stale.target)
    elsewhere.create(canary())  # someone else created it between the plan and the restore
    before = elsewhere.describe()
    with pytest.raises(Conflict, match="created by someone else since the plan"):
        restore_secret.fn(backup, stale, str(uuid.uuid4()))
    assert elsewhere.describe() == before
