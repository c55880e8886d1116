"""The restore runbook (flows/restore.py) with real parts: gpg keys made at test time, AWS Secrets Manager and S3 on
moto_server, local stores, the Vault protocol double, and a Prefect server recording every run.

What a person restoring secrets checks: the values arrive in another kind of store and match the backup; a backup
that was altered, or encrypted to someone else, is refused before anything is written; the plan shows what changes
without a value; a rejection writes nothing; a failure half-way leaves the target as it was. Kills at every step
boundary are the crash harness's ``restore`` case.
"""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
import typer
from click.testing import Result
from prefect.artifacts import Artifact
from typer.testing import CliRunner

from cli import backup as commands
from errors import Conflict
from flows.backup import BackupPolicy, backup_secrets
from flows.jwt import JwtPolicy, rotate_jwt_signing_key
from flows.restore import restore_secrets
from rotation import RotationOptions
from rotation.approval import ApprovalDecision, ApprovalRejected, Preapproval, give_decision, waiting_for
from rotation.context import RotationRolledBack
from rotation.journal import Journal, Lease, RotationState
from stores import SecretStore, Stage, open_store
from stores.errors import SecretNotFound
from targets.backup.archive import BackupTampered
from targets.backup.openpgp import NotARecipient
from targets.jwt.keyset import JwtKeyset, new_key
from tasks.backup import BackupRef
from tests.fixtures.gpg import GpgKeys
from tests.leaks import canary, error_text
from tests.test_backup import _aws, _backup, _flip_payload_byte, _local_secrets, _no_values, _rotate, s3_destination

__all__ = ["s3_destination"]  # a fixture this module uses


def _options(journal: Path, **changes: Any) -> RotationOptions:
    """Started by alice, approved in advance by bob (four eyes), journal in the test's folder."""
    defaults = {"journal": str(journal), "started_by": "alice", "preapproved": Preapproval(approver="bob")}
    return RotationOptions(**{**defaults, **changes})


def _stages(stores: dict[str, SecretStore]) -> dict[str, Any]:
    """Every target secret's versions and stages, or None where it does not exist: what a rollback must keep."""
    found: dict[str, Any] = {}
    for name, store in stores.items():
        try:
            found[name] = store.describe()
        except SecretNotFound:
            found[name] = None
    return found


def test_round_trip_from_aws_on_moto_into_a_local_store(
    prefect_server, moto_server, gpg_keys: GpgKeys, s3_destination, tmp_path: Path, caplog
) -> None:
    prefix = f"restore-{uuid.uuid4().hex[:8]}"
    values = {f"svc{i}": canary() for i in range(3)}
    for name, value in values.items():
        open_store(_aws(moto_server, f"{prefix}/{name}")).create(value)
    destination, _ = s3_destination()
    written = backup_secrets(
        _aws(moto_server, f"{prefix}/*"),
        destination,
        [gpg_keys.admin],
        policy=BackupPolicy(),
        signing_key=gpg_keys.signer,
        gnupg_home=str(gpg_keys.home),
    )
    backup = BackupRef(
        destination=destination, backup_id=written["backup_id"], gnupg_home=str(gpg_keys.home), signer=gpg_keys.signer
    )
    into = f"local://{tmp_path / 'restored.db'}?secret=copy/*"
    journal = tmp_path / "journal.db"

    summary = restore_secrets(backup, into, options=_options(journal))
    assert summary["state"] == RotationState.COMPLETED
    assert (summary["plan"]["create"], summary["versions_checked"]) == (3, 3)
    for name, value in values.items():
        assert open_store(f"local://{tmp_path / 'restored.db'}?secret=copy/{name}").read() == value

    again = restore_secrets(backup, into, options=_options(journal))  # a second restore finds nothing to change
    assert again["plan"] == {"create": 0, "update": 0, "unchanged": 3, "blocked": 0}
    _no_values(caplog.text, list(values.values()))


def test_round_trip_from_a_local_store_into_vault_with_an_update_and_a_created_previous(
    prefect_server, gpg_keys: GpgKeys, vault_env, tmp_path: Path
) -> None:
    older, newer, token = canary(), canary(), canary()
    source = _local_secrets(tmp_path / "source.db", {"db": older, "token": token})
    _rotate(source["db"], newer)
    backup = _backup(f"local://{tmp_path / 'source.db'}?secret=*", tmp_path / "backups", gpg_keys, stages="all")
    folder = f"rotation-tests/restore-{uuid.uuid4().hex[:8]}"
    existing = open_store(f"vault://{vault_env.mount}/{folder}/token")
    existing.create(canary())  # the token exists in Vault with another value: it is updated
    try:
        summary = restore_secrets(backup, f"vault://{vault_env.mount}/{folder}/*", options=_options(tmp_path / "j.db"))
        assert summary["plan"] == {"create": 1, "update": 1, "unchanged": 0, "blocked": 0}
        db = open_store(f"vault://{vault_env.mount}/{folder}/db")
        assert (db.read(Stage.CURRENT), db.read(Stage.PREVIOUS)) == (newer, older)
        assert existing.read() == token
        assert summary["versions_checked"] == 3
    finally:
        for name in ("db", "token"):
            open_store(f"vault://{vault_env.mount}/{folder}/{name}").delete()


def test_the_plan_lists_every_change_without_values_in_the_journal_and_the_artifact(
    prefect_server, gpg_keys: GpgKeys, tmp_path: Path
) -> None:
    values = {name: canary() for name in ("same", "changed", "missing")}
    _local_secrets(tmp_path / "source.db", values)
    backup = _backup(f"local://{tmp_path / 'source.db'}?secret=*", tmp_path / "backups", gpg_keys)
    others = {"changed": canary()}
    _local_secrets(tmp_path / "target.db", {"same": values["same"], **others})
    journal = Journal(tmp_path / "journal.db")

    summary = restore_secrets(backup, f"local://{tmp_path / 'target.db'}?secret=*", options=_options(journal.path))
    steps = journal.steps(summary["rotation_id"])
    planned = {p["name"]: p["action"] for p in steps["plan"].facts["secrets"]}
    assert planned == {"same": "unchanged", "changed": "update", "missing": "create"}
    assert {n for n in steps if n.startswith("restore:")} == {"restore:changed", "restore:missing"}
    artifact = Artifact.get(steps["show-plan"].facts)
    assert artifact is not None and "**update**" in artifact.data and "`missing`" in artifact.data
    shown = (
        artifact.data
        + str([s.facts for s in steps.values()])
        + str([e.details for e in journal.events(summary["rotation_id"])])
    )
    _no_values(shown, [*values.values(), *others.values()])


@pytest.mark.parametrize("refusal", ["tampered", "another-key", "blocked", "locked"])
def test_a_refused_restore_writes_nothing_and_leaves_no_rotation(
    prefect_server, gpg_keys: GpgKeys, tmp_path: Path, refusal: str
) -> None:
    values = {"api": canary(), "db": canary()}
    _local_secrets(tmp_path / "source.db", values)
    recipients = [gpg_keys.outsider] if refusal == "another-key" else [gpg_keys.admin]
    backup = _backup(
        f"local://{tmp_path / 'source.db'}?secret=*", tmp_path / "backups", gpg_keys, recipients=recipients
    )
    target = _local_secrets(tmp_path / "target.db", {"db": canary()})
    if refusal == "tampered":
        _flip_payload_byte(tmp_path / "backups", backup.backup_id)
    if refusal == "blocked":
        target["db"].stage(canary(), str(uuid.uuid4()))  # a rotation of it is in progress
    before = _stages({n: open_store(f"local://{tmp_path / 'target.db'}?secret={n}") for n in values})
    journal = Journal(tmp_path / "journal.db")
    blocking = []
    if refusal == "locked":  # a rotation of one of its secrets has begun, and staged nothing yet
        lease = Lease.new(str(uuid.uuid4()), None)
        journal.begin(
            secret=target["db"].uri.display, runbook="jwt-signing-key", started_by="carol", parameters={},
            consumers=[], versions={}, lease=lease,
        )  # fmt: skip
        blocking = [lease.rotation_id]

    expected = {"tampered": BackupTampered, "another-key": NotARecipient, "blocked": Conflict, "locked": Conflict}
    says = {
        "tampered": "SHA-256 differs",
        "another-key": f"{gpg_keys.outsider}",
        "blocked": "holds its PENDING stage",
        "locked": f"(which shares secrets with local://{tmp_path / 'target.db'}?secret=*) is already in progress",
    }[refusal]
    with pytest.raises(expected[refusal]) as refused:
        restore_secrets(backup, f"local://{tmp_path / 'target.db'}?secret=*", options=_options(journal.path))
    assert says in str(refused.value)
    _no_values(error_text(refused.value), list(values.values()))
    assert _stages({n: open_store(f"local://{tmp_path / 'target.db'}?secret={n}") for n in values}) == before
    assert [r.id for r in journal.list()] == blocking  # refused by its checks: not even a journal entry, and no lock


def test_a_rejected_restore_writes_nothing(prefect_server, gpg_keys: GpgKeys, tmp_path: Path) -> None:
    values = {"api": canary(), "db": canary()}
    _local_secrets(tmp_path / "source.db", values)
    backup = _backup(f"local://{tmp_path / 'source.db'}?secret=*", tmp_path / "backups", gpg_keys)
    _local_secrets(tmp_path / "target.db", {"db": canary()})
    stores = {n: open_store(f"local://{tmp_path / 'target.db'}?secret={n}") for n in values}
    before = _stages(stores)
    journal = Journal(tmp_path / "journal.db")
    options = _options(journal.path, preapproved=None, approval_timeout_seconds=2)  # nobody answers: a rejection

    with pytest.raises(RotationRolledBack, match="nobody approved 'approve-restore'") as rejected:
        restore_secrets(backup, f"local://{tmp_path / 'target.db'}?secret=*", options=options)
    assert isinstance(rejected.value.__cause__, ApprovalRejected)
    assert _stages(stores) == before
    (record,) = journal.list()
    assert record.state is RotationState.ROLLED_BACK


def test_a_failure_half_way_rolls_back_what_the_restore_wrote(
    prefect_server, gpg_keys: GpgKeys, tmp_path: Path
) -> None:
    """Approved after someone else changed the last secret: its restore is a conflict, and the secrets restored
    before it are put back (the created one deleted, the updated one reverted); the other writer's value stays."""
    values = {"a-new": canary(), "b-changed": canary(), "c-overtaken": canary()}
    _local_secrets(tmp_path / "source.db", values)
    backup = _backup(f"local://{tmp_path / 'source.db'}?secret=*", tmp_path / "backups", gpg_keys)
    target = _local_secrets(tmp_path / "target.db", {"b-changed": canary(), "c-overtaken": canary()})
    _rotate(target["b-changed"], canary())  # its revert must give PREVIOUS back too
    stores = {n: open_store(f"local://{tmp_path / 'target.db'}?secret={n}") for n in values}
    journal = Journal(tmp_path / "journal.db")
    outcome: dict[str, BaseException] = {}

    def run() -> None:
        try:
            restore_secrets(
                backup, f"local://{tmp_path / 'target.db'}?secret=*", options=_options(journal.path, preapproved=None)
            )
        except BaseException as exc:
            outcome["error"] = exc

    runner = threading.Thread(target=run)
    runner.start()
    waiting = None
    for _ in range(300):
        active = journal.list(active_only=True) if journal.path.exists() else []
        waiting = waiting_for(journal, active[0].id, active[0].flow_run_id) if active else None
        if waiting is not None:
            break
        threading.Event().wait(0.2)
    assert waiting is not None, "the restore never waited for its approval"
    _rotate(target["c-overtaken"], canary())  # another writer, between the plan and the restore
    before = _stages(stores)
    give_decision(
        waiting.flow_run_id,
        ApprovalDecision(
            decision="approve", approver="bob", reason="restore", rotation_id=waiting.rotation_id, step=waiting.step
        ),
    )
    runner.join(120)

    assert isinstance(outcome.get("error"), RotationRolledBack), outcome
    assert "given another CURRENT version since the plan" in str(outcome["error"])
    assert _stages(stores) == before  # a-new deleted again, b-changed reverted exactly, c-overtaken untouched
    assert journal.get(waiting.rotation_id).state is RotationState.ROLLED_BACK


def test_rotate_after_rotates_each_restored_secret_with_its_last_runbook(
    prefect_server, gpg_keys: GpgKeys, tmp_path: Path
) -> None:
    """A JWT keyset rotated here before, then lost: restored, it is rotated again as compromised, with the runbook
    and parameters of its last rotation; a restored secret that was never rotated here is left for a person."""
    store = open_store(f"local://{tmp_path / 'store.db'}?secret=jwt")
    store.create(JwtKeyset(keys=[new_key("HS256", 512)]).to_secret())
    _local_secrets(tmp_path / "store.db", {"never-rotated": canary()})
    journal = Journal(tmp_path / "journal.db")
    policy = JwtPolicy(token_lifetime_seconds=0, grace_seconds=0)
    first = rotate_jwt_signing_key(store.uri.display, policy=policy, options=_options(journal.path))
    backup = _backup(f"local://{tmp_path / 'store.db'}?secret=*", tmp_path / "backups", gpg_keys)
    backed_up = JwtKeyset.from_secret(store.read()).signing_key.kid
    store.delete()  # lost

    summary = restore_secrets(
        backup, f"local://{tmp_path / 'store.db'}?secret=*", rotate_after=True, options=_options(journal.path)
    )
    assert summary["plan"]["create"] == 1 and summary["plan"]["unchanged"] == 1
    (again,) = summary["rotations"]
    record = journal.get(again)
    assert (record.runbook, record.secret, record.state) == ("jwt-signing-key", store.uri.display, "completed")
    assert record.parameters["policy"] == journal.get(first["rotation_id"]).parameters["policy"]
    rotated = JwtKeyset.from_secret(store.read())
    assert rotated.signing_key.kid != backed_up and [k.kid for k in rotated.keys] == [rotated.signing_key.kid]


def _rotate_command(*args: str) -> Result:
    app = typer.Typer(pretty_exceptions_enable=False)
    app.command()(commands.restore)
    app.command()(commands.drill)  # two commands, so that typer keeps the command's name as cli/app.py does
    return CliRunner().invoke(app, ["restore", *args])


def test_rotate_restore_prints_the_plan_then_restores_with_a_decision_given_in_advance(
    prefect_server, gpg_keys: GpgKeys, tmp_path: Path
) -> None:
    values = {"api": canary(), "db": canary()}
    _local_secrets(tmp_path / "source.db", values)
    backup = _backup(f"local://{tmp_path / 'source.db'}?secret=*", tmp_path / "backups", gpg_keys)
    _local_secrets(tmp_path / "target.db", {"db": canary()})
    home = ["--gnupg-home", str(gpg_keys.home), "--journal", str(tmp_path / "journal.db")]
    into = f"local://{tmp_path / 'target.db'}?secret=*"

    result = _rotate_command(
        str(tmp_path / "backups"), "--into", into, "--signer", gpg_keys.signer, "--yes", "--approver", "bob", *home
    )  # the destination alone: its newest backup
    assert result.exit_code == 0, result.output
    plan, _, summary = result.stdout.partition("{")
    assert "restore plan: 1 create, 1 update" in plan and "api" in plan and "update" in plan
    assert json.loads("{" + summary)["state"] == "completed"
    for name, value in values.items():
        assert open_store(f"local://{tmp_path / 'target.db'}?secret={name}").read() == value
    _no_values(result.output, list(values.values()))
    again = _rotate_command(
        f"{tmp_path / 'backups'}/{backup.backup_id}", "--into", into, "--yes", "--approver", "bob", *home
    )
    assert again.exit_code == 0, again.output
    assert "restore plan: 2 unchanged" in again.stdout


@pytest.mark.parametrize(
    ("arguments", "says"),
    [
        (["{backups}/20990101T000000Z-00000000", "--into", "{target}?secret=*"], "has no 20990101T000000Z-00000000"),
        (["{backups}", "--into", "{target}?secret=nothing-here"], "does not exist: to create secrets, restore into"),
        (["{backups}", "--into", "ftp://host/secret"], "unknown store scheme 'ftp'"),
        (["{backups}", "--into", "{target}?secret=*", "--signer", "{outsider}"], "not by the required signer"),
        (["{empty}", "--into", "{target}?secret=*"], "holds no backup"),
    ],
    ids=["unknown-backup", "missing-exact-target", "bad-uri", "wrong-signer", "no-backup"],
)
def test_rotate_restore_refuses_bad_input_in_one_line_and_writes_nothing(
    prefect_server, gpg_keys: GpgKeys, tmp_path: Path, arguments: list[str], says: str
) -> None:
    value = canary()
    _local_secrets(tmp_path / "source.db", {"db": value})
    _backup(f"local://{tmp_path / 'source.db'}?secret=*", tmp_path / "backups", gpg_keys)
    (tmp_path / "empty").mkdir(mode=0o700)
    named = {
        "backups": str(tmp_path / "backups"),
        "target": f"local://{tmp_path / 'target.db'}",
        "outsider": gpg_keys.outsider,
        "empty": str(tmp_path / "empty"),
    }
    result = _rotate_command(*(a.format(**named) for a in arguments), "--gnupg-home", str(gpg_keys.home), "--yes")
    assert result.exit_code == 1, result.output
    assert result.output.startswith("error:") and "Traceback" not in result.output
    assert says in " ".join(result.output.split())
    assert value not in result.output
    assert not (tmp_path / "target.db").exists()
