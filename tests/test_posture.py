"""The posture report and the audit trail, through ``rotate posture`` and ``rotate audit``.

Two environments: a staging store on AWS Secrets Manager (moto_server over HTTP) and a production local store. They
are seeded with an old, a weak, a duplicated (the same password in both environments), an expiring (a SAML
certificate past two thirds of its life), two half-rotated (a PENDING left behind; a lock whose lease expired) and a
never-backed-up secret, and one whose deployment's schedule is inactive. Every other secret has a deployment with an
active schedule on the Prefect server, was backed up (OpenPGP, the real backup flow) and drilled. Each problem must be
flagged with its advice, a healthy store must show nothing, and no value may appear in the JSON, the terminal output
or the Prefect artifacts.
"""

from __future__ import annotations

import http.server
import inspect
import json
import secrets
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from prefect import get_client
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.client.schemas.actions import DeploymentScheduleCreate
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.client.schemas.schedules import CronSchedule
from typer.testing import CliRunner

from cli.app import app
from deployments.automations import install
from flows.backup import backup_secrets
from flows.drill import restore_drill
from flows.posture import secret_posture
from rotation.journal import Journal, Lease, RotationState
from stores import open_store
from targets.jwt.keyset import JwtKeyset, new_key
from targets.posture.checks import assess
from targets.posture.facts import RotationFacts, SecretFacts
from targets.posture.policy import PosturePolicy
from targets.posture.shapes import inspect_value
from targets.saml.certificates import CertificateProfile, generate_key, key_id, key_pem, self_signed
from targets.saml.keyset import KeyPair, SamlKeyset, new_pair
from tests.fixtures.gpg import GpgKeys
from tests.fixtures.ports import free_port
from tests.leaks import canary

POLICY_BROKEN = 3


def _password() -> str:
    return canary() + secrets.token_urlsafe(8)


def _postgres(password: str) -> str:
    return json.dumps({"engine": "postgres", "host": "db", "username": "app", "password": password, "dbname": "o"})


def _redis(password: str) -> str:
    return json.dumps({"host": "cache", "port": 6379, "username": "app", "password": password})


def _smtp(password: str) -> str:
    return json.dumps(
        {"host": "smtp.example.com", "port": 587, "tls": "starttls", "username": "a", "password": password}
    )


def _saml(validity_days: int = 365, issued_days_ago: float = 0) -> str:
    profile = CertificateProfile(subject="CN=sp.example.com", key_type="ec", validity_days=validity_days)
    if not issued_days_ago:
        return SamlKeyset((new_pair(profile),)).to_secret()
    key = generate_key(profile)
    cert = self_signed(key, profile, now=datetime.now(UTC) - timedelta(days=issued_days_ago))
    return SamlKeyset((KeyPair(key_id(key), "signing", key, key_pem(key), cert),)).to_secret()


def _jwt() -> str:
    return JwtKeyset(keys=(new_key("HS256", 512),)).to_secret()


@dataclass
class World:
    """Stores, a journal, deployments and a backup destination, and every value written (to scan outputs for)."""

    tmp: Path
    values: list[str] = field(default_factory=list)
    uris: dict[str, str] = field(default_factory=dict)  # label -> the secret's identity
    deployments: list[str] = field(default_factory=list)
    stores: list[str] = field(default_factory=list)  # the store selections, one per environment

    @property
    def journal(self) -> str:
        return str(self.tmp / "journal.db")

    backups: list[str] = field(default_factory=list)  # the backup destinations, one per environment

    def put(self, label: str, uri: str, value: str) -> str:
        store = open_store(uri)
        store.create(value)
        self.values.append(value)
        document = json.loads(value)
        entries = [document, *document.get("keys", [])]
        self.values += [e[f] for e in entries for f in ("password", "k", "key", "pem", "tls.key") if f in e]
        self.uris[label] = store.uri.display
        return store.uri.display

    def schedule(self, label: str, active: bool = True) -> None:
        name = f"posture-{label}-{uuid.uuid4().hex[:8]}"
        with get_client(sync_client=True) as client:
            flow_id = client.create_flow_from_name("rotate-for-posture-tests")
            client.create_deployment(
                flow_id,
                name,
                parameters={"secret": self.uris[label], "policy": {"grace_seconds": 0}},
                # Once a year, so the server's scheduler never starts one during the suite.
                schedules=[DeploymentScheduleCreate(schedule=CronSchedule(cron="0 3 1 1 *"), active=active)],
            )
        self.deployments.append(name)

    def age(self, label: str, days: float) -> None:
        """Make the secret's versions ``days`` older, as a store file written that long ago holds them."""
        uri = open_store(self.uris[label]).uri
        created = (datetime.now(UTC) - timedelta(days=days)).isoformat()
        with sqlite3.connect(uri.location) as db:
            db.execute("UPDATE versions SET created_at = ? WHERE secret = ?", (created, uri.name))

    def back_up_and_drill(self, source: str, gpg: GpgKeys) -> None:
        """Back up ``source`` into a destination of its own, and prove it restores."""
        destination, home = str(self.tmp / f"backups-{len(self.backups)}"), str(gpg.home)
        backup_secrets(source, destination, [gpg.admin], signing_key=gpg.signer, gnupg_home=home)
        restore_drill(destination, signer=gpg.signer, gnupg_home=home)
        self.backups.append(destination)


def _local(world: World, store: str, name: str) -> str:
    return f"local://{world.tmp / store}?secret={name}"


@pytest.fixture
def aws_endpoint(moto_server: str) -> str:
    return moto_server


@pytest.fixture
def healthy(prefect_server, gpg_keys: GpgKeys, tmp_path: Path) -> World:
    world = World(tmp_path)
    for label, value in {
        "jwt": _jwt(),
        "db": _postgres(_password()),
        "cache": _redis(_password()),
        "mail": _smtp(_password()),
        "saml": _saml(),
    }.items():
        world.put(label, _local(world, "healthy.db", f"prod/{label}"), value)
        world.schedule(label)
    world.back_up_and_drill(_local(world, "healthy.db", "*"), gpg_keys)
    return world


@pytest.fixture
def seeded(prefect_server, gpg_keys: GpgKeys, aws_endpoint: str, tmp_path: Path) -> World:
    world = World(tmp_path)
    prefix = f"staging-{uuid.uuid4().hex[:8]}"
    aws = f"?{urlencode({'region': 'us-east-1', 'endpoint_url': aws_endpoint})}"
    shared = _password()
    world.put("staging-db", f"aws://{prefix}/db{aws}", _postgres(shared))
    world.put("staging-jwt", f"aws://{prefix}/jwt{aws}", _jwt())
    world.put("prod-db", _local(world, "prod.db", "prod/db"), _postgres(shared))
    world.put("old", _local(world, "prod.db", "prod/old"), _redis(_password()))
    world.age("old", 200)
    weak = "Pw" + secrets.token_hex(3)  # 8 characters, 2 classes
    world.put("weak", _local(world, "prod.db", "prod/weak"), _smtp(weak))
    world.put("expiring", _local(world, "prod.db", "prod/saml"), _saml(validity_days=10, issued_days_ago=8))
    world.put("pending", _local(world, "prod.db", "prod/pending"), _redis(_password()))
    left = _redis(_password())
    open_store(world.uris["pending"]).stage(left, "rotation-that-nobody-owns")
    world.values.append(left)
    world.put("locked", _local(world, "prod.db", "prod/locked"), _jwt())
    world.put("unscheduled", _local(world, "prod.db", "prod/unscheduled"), _jwt())
    for label in world.uris:
        world.schedule(label, active=label != "unscheduled")
    world.back_up_and_drill(f"aws://{prefix}/*{aws}", gpg_keys)
    world.back_up_and_drill(_local(world, "prod.db", "*"), gpg_keys)
    world.put("never-backed-up", _local(world, "prod.db", "prod/new"), _postgres(_password()))
    world.schedule("never-backed-up")
    # A rotation whose run died: it holds the lock, and its lease has expired.
    journal = Journal(world.journal)
    lease = Lease.new(str(uuid.uuid4()), None, seconds=0.05)
    journal.begin(
        secret=world.uris["locked"],
        runbook="jwt-signing-key",
        started_by="alice",
        parameters={},
        consumers=[],
        versions={},
        lease=lease,
    )
    # A completed rotation in the journal (the store dates the version too).
    done = Lease.new(str(uuid.uuid4()), None)
    journal.begin(
        secret=world.uris["staging-jwt"],
        runbook="jwt-signing-key",
        started_by="bob",
        parameters={},
        consumers=[],
        versions={},
        lease=done,
    )
    journal.end_run(done, RotationState.COMPLETED)
    time.sleep(0.1)
    world.stores = [f"aws://{prefix}/*{aws}", _local(world, "prod.db", "*")]
    return world


def _posture(world: World, stores: list[str], *extra: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        app,
        ["posture", *stores, *(f"--backups={b}" for b in world.backups), "--journal", world.journal, *extra],
    )
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.output


def _artifact_text() -> str:
    """Every posture artifact on the server (each run's table and markdown)."""
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["secret-posture", "secret-posture-findings"])),
            limit=200,
        )
    assert {a.key for a in found} == {"secret-posture", "secret-posture-findings"}
    return "\n".join(a.data if isinstance(a.data, str) else json.dumps(a.data) for a in found)


def _no_value_in(world: World, text: str) -> None:
    leaked = [v for v in world.values if v in text]
    assert not leaked, f"{len(leaked)} secret values appear in the output"


def test_every_seeded_problem_is_flagged_with_what_to_do(seeded: World) -> None:
    code, output = _posture(seeded, seeded.stores, "--json")  # type: ignore[attr-defined]
    assert code == POLICY_BROKEN, output
    report = json.loads(output)
    found = {(f["check"], f["secret"]): f for f in report["findings"]}
    u = seeded.uris
    expected = {
        ("too-old", u["old"]): "rotate it now",
        ("weak", u["weak"]): "the runbooks generate random values",
        ("duplicate", u["prod-db"]): "rotate one of them",
        ("duplicate", u["staging-db"]): "rotate one of them",
        ("certificate-expiring", u["expiring"]): "rotate the SAML keyset",
        ("pending-left", u["pending"]): "promote or discard that version",
        ("stuck", u["locked"]): "rotate resume",
        ("never-backed-up", u["never-backed-up"]): "add its store (or prefix) to the backup deployment",
        ("schedule-inactive", u["unscheduled"]): "prefect deployment schedule resume",
    }
    for key, advice in expected.items():
        assert key in found, f"{key} not flagged; found {sorted(found)}"
        assert advice in found[key]["advice"], found[key]
    assert "another environment" in found[("duplicate", u["prod-db"])]["what"]
    assert "200" in found[("too-old", u["old"])]["what"]
    assert "8 characters (at least 16)" in found[("weak", u["weak"])]["what"]
    failed = {key for key, f in found.items() if f["severity"] == "fail"}
    assert failed == set(expected), sorted(failed ^ set(expected))
    # AWS dates its versions through ListSecretVersionIds: no secret's age is unknown.
    warned = {key for key, f in found.items() if f["severity"] == "warn"}
    assert warned == set()
    rows = {r["secret"]: r for r in report["secrets"]}
    assert rows[u["staging-db"]]["age_days"] == 0
    assert len(rows) == len(u)
    assert rows[u["staging-jwt"]]["status"] == "ok" and rows[u["staging-jwt"]]["age_days"] == 0
    assert rows[u["staging-jwt"]]["last_rotation"].startswith("completed ")
    assert rows[u["expiring"]]["certificate_days"] == pytest.approx(2, abs=0.2)
    assert rows[u["unscheduled"]]["schedule"] == "inactive"
    assert rows[u["weak"]]["shape"] == "smtp" and rows[u["staging-db"]]["shape"] == "postgres"
    assert report["policy_broken"] is True
    _no_value_in(seeded, output)

    code, table = _posture(seeded, seeded.stores)
    assert code == POLICY_BROKEN
    assert "policy broken" in table and "rotate resume" in table and "never backed up" not in table
    _no_value_in(seeded, table)
    artifacts = _artifact_text()
    assert seeded.uris["weak"] in artifacts and "policy broken" in artifacts
    _no_value_in(seeded, artifacts)


def test_a_healthy_store_shows_nothing_and_a_stricter_policy_breaks_it(healthy: World, tmp_path: Path) -> None:
    store = _local(healthy, "healthy.db", "*")
    code, output = _posture(healthy, [store], "--json")
    assert code == 0, output
    report = json.loads(output)
    assert report["findings"] == []
    assert {r["status"] for r in report["secrets"]} == {"ok"}
    assert {r["shape"] for r in report["secrets"]} == {"jwt-keyset", "postgres", "redis", "smtp", "saml-keyset"}
    assert all(r["schedule"] == "active" and r["next_rotation"] for r in report["secrets"])
    _no_value_in(healthy, output)

    code, table = _posture(healthy, [store])
    assert code == 0 and "policy holds" in table

    strict = tmp_path / "policy.json"
    strict.write_text(json.dumps({"max_age": [{"match": "prod/db", "max_age_days": 0.000001}], "min_ec_bits": 384}))
    code, output = _posture(healthy, [store], "--json", "--policy", str(strict))
    assert code == POLICY_BROKEN
    checks = {(f["check"], f["secret"].split("=")[-1]) for f in json.loads(output)["findings"]}
    assert checks == {("too-old", "prod/db"), ("weak", "prod/saml")}


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["ftp://host/x"], "unknown store scheme 'ftp'"),
        (["local:///nonexistent/store.db?secret=*"], "no secret matches"),
        (["STORE", "--policy", "POLICY"], "max_age_days: Input should be greater than 0"),
        (["STORE", "--policy", "NOTJSON"], "not JSON"),
        (["STORE", "--backups", "ftp://x"], "is not a backup destination"),
    ],
    ids=["scheme", "no-match", "policy-value", "policy-syntax", "destination"],
)
def test_bad_input_is_one_line_and_exit_status_1(tmp_path: Path, args: list[str], says: str) -> None:
    store = f"local://{tmp_path / 's.db'}?secret=a"
    open_store(store).create(canary())
    (tmp_path / "p.json").write_text('{"max_age_days": 0}')
    (tmp_path / "bad.json").write_text("max_age_days: 3")
    named = {"STORE": store, "POLICY": str(tmp_path / "p.json"), "NOTJSON": str(tmp_path / "bad.json")}
    result = CliRunner().invoke(app, ["posture", *(named.get(a, a) for a in args)])
    assert result.exit_code == 1, result.output
    message = " ".join(result.output.split())  # the console wraps long lines
    assert message.startswith("error:") and says in message, message
    assert "Traceback" not in result.output


def test_a_reader_that_cannot_date_aws_versions_dates_them_by_the_journal(prefect_server, aws_denied_store, tmp_path):
    """A role allowed only DescribeSecret and GetSecretValue gets no version dates from AWS: the journal's last
    completed rotation dates a secret's CURRENT, and a secret without one is reported as of unknown age."""
    (rotated, _), (never, _) = aws_denied_store(), aws_denied_store()
    journal = Journal(tmp_path / "journal.db")
    done = Lease.new(str(uuid.uuid4()), None)
    journal.begin(
        secret=rotated.uri.display, runbook="jwt-signing-key", started_by="bob", parameters={}, consumers=[],
        versions={}, lease=done,
    )  # fmt: skip
    journal.end_run(done, RotationState.COMPLETED)
    result = CliRunner().invoke(
        app, ["posture", rotated.uri.display, never.uri.display, "--journal", journal.location, "--json"]
    )
    assert "Traceback" not in result.output, result.output
    report = json.loads(result.output)
    warned = {(f["check"], f["secret"]) for f in report["findings"] if f["severity"] == "warn"}
    assert warned == {("age-unknown", never.uri.display)}
    rows = {r["secret"]: r for r in report["secrets"]}
    assert rows[rotated.uri.display]["age_days"] == 0 and rows[never.uri.display]["age_days"] is None


# --- the audit trail ---------------------------------------------------------------------------------------------


@pytest.fixture
def trail(tmp_path: Path) -> tuple[Journal, str, str]:
    """Two rotations: one refused for alice (four eyes), then approved by bob; one rejected by carol, rolled back."""
    journal = Journal(tmp_path / "journal.db")
    first, second = "local:///srv/store.db?secret=orders-db", "local:///srv/store.db?secret=auth-jwt"
    one = Lease.new(str(uuid.uuid4()), None)
    journal.begin(
        secret=first,
        runbook="postgres-credentials",
        started_by="alice",
        parameters={},
        consumers=[],
        versions={},
        lease=one,
    )
    journal.record(one.rotation_id, "approve-promote", "waiting", question="Promote?")
    journal.record(one.rotation_id, "approve-promote", "refused", approver="Alice ", reason="alice started this run")
    journal.record(one.rotation_id, "approve-promote", "approved", approver="bob", reason="change 1234")
    journal.end_run(one, RotationState.COMPLETED)
    two = Lease.new(str(uuid.uuid4()), None)
    journal.begin(
        secret=second, runbook="jwt-signing-key", started_by="dave", parameters={}, consumers=[], versions={}, lease=two
    )
    journal.record(two.rotation_id, "approve-promote", "rejected", approver="carol", reason="not during the release")
    journal.end_run(two, RotationState.ROLLED_BACK, "carol rejected 'approve-promote': not during the release")
    return journal, one.rotation_id, two.rotation_id


def _audit(journal: Journal, *args: str) -> list[dict]:
    result = CliRunner().invoke(app, ["audit", "--journal", journal.location, "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_audit_says_who_started_approved_refused_rejected_and_rolled_back(trail) -> None:
    journal, one, two = trail
    entries = _audit(journal)
    seen = [(e["action"], e["person"], e["rotation_id"]) for e in entries]
    assert seen == [
        ("started", "alice", one),
        ("refused", "Alice ", one),
        ("approved", "bob", one),
        ("started", "dave", two),
        ("rejected", "carol", two),
        ("rolled back", "carol", two),
    ]
    assert entries[1]["reason"] == "alice started this run" and entries[2]["step"] == "approve-promote"
    assert {e["secret"] for e in entries if e["rotation_id"] == two} == {"local:///srv/store.db?secret=auth-jwt"}

    assert [e["action"] for e in _audit(journal, "--person", "ALICE")] == ["started", "refused"]
    jwt = _audit(journal, "--secret", "local:///srv//./store.db?secret=auth-jwt")  # another spelling
    assert [e["action"] for e in jwt] == ["started", "rejected", "rolled back"]
    assert _audit(journal, "--since", "1d", "--until", (datetime.now(UTC) + timedelta(minutes=1)).isoformat())
    assert _audit(journal, "--until", "2000-01-01") == []
    assert _audit(journal, "--since", (datetime.now(UTC) + timedelta(hours=1)).isoformat()) == []

    table = CliRunner().invoke(app, ["audit", "--journal", journal.location])
    assert table.exit_code == 0 and "rolled back" in table.output and "carol" in table.output


def test_audit_refuses_a_time_it_cannot_read(trail) -> None:
    journal, _, _ = trail
    result = CliRunner().invoke(app, ["audit", "--journal", journal.location, "--since", "last tuesday"])
    message = " ".join(result.output.split())
    assert result.exit_code == 1 and message.startswith("error:") and "is not a time" in message, message


# --- running it daily, and telling people ------------------------------------------------------------------------


def test_prefect_yaml_runs_the_report_daily_on_an_inactive_schedule() -> None:
    document = yaml.safe_load((Path(__file__).resolve().parents[1] / "prefect.yaml").read_text())
    (daily,) = [d for d in document["deployments"] if d["entrypoint"] == "flows/posture.py:secret_posture"]
    assert [(s["cron"], s["active"]) for s in daily["schedules"]] == [("0 7 * * *", False)]
    inspect.signature(secret_posture.fn).bind(**daily["parameters"])  # every parameter is one the flow takes
    PosturePolicy.model_validate(daily["parameters"]["policy"])


def test_a_broken_policy_notifies_people(prefect_server, tmp_path: Path) -> None:
    heard: list[bytes] = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            heard.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", free_port()), Hook)
    installed: list[str] = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        block = CustomWebhookNotificationBlock(
            name="posture-test",
            url=f"http://127.0.0.1:{server.server_port}/hook",
            json_data={"text": "{{body}}"},
            allow_private_urls=True,
        )
        block_id = block.save(f"posture-{uuid.uuid4().hex[:8]}")
        installed += install(block_id)
        assert any("posture" in name for name in installed)
        store = f"local://{tmp_path / 's.db'}?secret=weak"
        value = "sh" + secrets.token_hex(2)
        open_store(store).create(value)
        result = CliRunner().invoke(app, ["posture", store, "--journal", str(tmp_path / "j.db")])
        assert result.exit_code == POLICY_BROKEN, result.output
        deadline = time.monotonic() + 60
        while not heard and time.monotonic() < deadline:
            time.sleep(0.5)
        assert heard, "no notification within 60 s"
        text = b"".join(heard).decode()
        assert "failed checks in 1 secrets" in text and value not in text
    finally:
        server.shutdown()
        with get_client(sync_client=True) as client:  # nothing else in the suite may notify a closed webhook
            for name in installed:
                for automation in client.read_automations_by_name(name=name):
                    if "notify" in name:
                        client.delete_automation(automation.id)


# --- the checks themselves, over facts (no store, no server) ----------------------------------------------------


def _rsa_pem(bits: int) -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


@pytest.mark.parametrize(
    ("value", "shape", "weak"),
    [
        (
            json.dumps({"keys": [{"kid": "a", "alg": "RS256", "status": "signing", "pem": _rsa_pem(1024)}]}),
            "jwt-keyset",
            "1024 bits (rsa; at least 2048)",
        ),
        (json.dumps({"JWT_SECRET_KEY_NEW": "ab" * 16}), "jwt-keyset", "128 bits (symmetric; at least 256)"),
        (
            json.dumps({"host": "h", "port": 6379, "username": "u", "password": "0123456789abcdef" * 2}),
            "redis",
            "about 128 bits (at least 160)",
        ),
        ("summer2024", "opaque", "10 characters (at least 16), about 52 bits (at least 160)"),
    ],
    ids=["rsa-1024", "hs-128", "hex-password", "short-password"],
)
def test_each_shape_is_measured_and_judged(value: str, shape: str, weak: str) -> None:
    facts = inspect_value(value, secrets.token_bytes(32))
    assert facts.shape == shape and facts.problems == ()
    secret = SecretFacts(
        uri="local:///s.db?secret=x", name="x", environment="e", value=facts, current_created_at=datetime.now(UTC)
    )
    policy = PosturePolicy(min_password_bits=160, require_schedule=False)
    report = assess(["e"], [secret], {}, [], [], policy, datetime.now(UTC))
    (finding,) = report.findings
    assert finding.check == "weak" and weak in finding.what, finding.what
    assert value not in report.model_dump_json()


def test_a_waiting_rotation_past_its_due_time_and_a_failed_one_are_flagged() -> None:
    now = datetime.now(UTC)
    secrets_ = [
        SecretFacts(uri=f"local:///s.db?secret={n}", name=n, environment="e", current_created_at=now)
        for n in ("waiting", "failed")
    ]
    common = {"runbook": "jwt-signing-key", "started_by": "alice", "started_at": now, "updated_at": now}
    rotations = {
        secrets_[0].uri: RotationFacts(rotation_id="r1", state="waiting", due=now - timedelta(hours=3), **common),
        secrets_[1].uri: RotationFacts(rotation_id="r2", state="failed", reason="step x failed", **common),
    }
    policy = PosturePolicy(require_schedule=False)
    report = assess(["e"], secrets_, rotations, [], [], policy, now)
    found = {(f.check, f.secret): f.advice for f in report.findings}
    assert found == {
        ("stuck", secrets_[0].uri): "check the work pool's worker, then `rotate resume r1`",
        ("failed", secrets_[1].uri): "fix the cause, then `rotate resume r2`",
    }
