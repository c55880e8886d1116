"""The SAML certificate runbook (flows/saml.py) against a real identity provider (pysaml2) and the example auth
service as the service provider, on a Prefect server.

The IdP reads the SP's metadata from its URL and reads it again once its copy is as old as the metadata's
``cacheDuration`` (1 s here), as an IdP honouring it does. While a rotation runs, a browser-like client signs in
through the SP over and over (both bindings), and a sampler parses the served metadata every few milliseconds.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cli.app import app
from errors import BadInput
from flows.saml import SamlPolicy, rotate_saml_certificate
from rotation import RotationOptions, RotationRolledBack
from rotation.approval import ApprovalDecision, Preapproval, give_decision, waiting_for
from rotation.journal import Journal, RotationState
from stores import SecretStore, Stage, open_store
from targets.http import http_client
from targets.jwt.keyset import JwtKeyset, new_key
from targets.saml.certificates import CertificateProfile
from targets.saml.keyset import SamlKeyset, new_pair, switch_signing
from targets.saml.metadata import keyset_metadata, parse_metadata
from targets.saml.sign_in import SignInFailed, sign_in
from tasks.saml import step_version
from tests.fixtures.auth_service import RunningService
from tests.fixtures.prefect import drain_prefect_workers
from tests.fixtures.saml_idp import IdentityProvider
from tests.test_saml_rollover import _bad_documents, _garbled, _pem
from tests.tls import issue_for_request

PROFILE = {"subject": "CN=auth.example.com,O=Example", "rsa_bits": 2048, "validity_days": 90}
BINDINGS = ("redirect", "post")
CACHE_SECONDS = 1


@dataclass
class SamlWorld:
    """A secret holding the SP's key set, the SP serving it, and the IdP that trusts the SP."""

    store: SecretStore
    service: RunningService
    idp: IdentityProvider
    journal: Journal

    @property
    def secret(self) -> str:
        return self.store.uri.display

    @property
    def base(self) -> str:
        return self.service.base_url

    def kwargs(self, **policy: Any) -> dict[str, Any]:
        return {
            "secret": self.secret,
            "service_providers": [
                {
                    "name": "auth-service",
                    "metadata_url": f"{self.base}/saml/metadata",
                    "login_urls": [f"{self.base}/saml/login?binding={b}" for b in BINDINGS],
                }
            ],
            "consumers": [{"name": "auth-service", "restart": {"kind": "http", "url": f"{self.base}/reload"}}],
            "policy": SamlPolicy(certificate=CertificateProfile(**PROFILE), grace_seconds=0.5, **policy),
        }

    def options(self, **values: Any) -> RotationOptions:
        defaults: dict[str, Any] = {"started_by": "alice", "journal": self.journal.location}
        return RotationOptions(**{**defaults, **values})

    def keyset(self) -> SamlKeyset:
        return SamlKeyset.from_secret(self.store.read(Stage.CURRENT))

    def served(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        metadata = parse_metadata(http_client().get(f"{self.base}/saml/metadata", timeout=10).content)
        return metadata.signing, metadata.encryption

    def stages(self) -> dict[str, list[str]]:
        return {v.version_id: list(v.stages) for v in self.store.describe().versions}


@pytest.fixture
def world(
    prefect_server, tmp_path: Path, auth_service: Callable[..., RunningService], saml_idp: IdentityProvider
) -> Iterator[SamlWorld]:
    store_file = tmp_path / "store.db"
    open_store(f"local://{store_file}?secret=jwt").create(JwtKeyset(keys=[new_key()]).to_secret())
    store = open_store(f"local://{store_file}?secret=saml")
    store.create(SamlKeyset((new_pair(CertificateProfile.of(**PROFILE)),)).to_secret())
    service = auth_service(
        f"local://{store_file}?secret=jwt",
        saml_store=store.uri.display,
        saml_idp_metadata=saml_idp.metadata_url,
        saml_cache_seconds=CACHE_SECONDS,
    )
    saml_idp.trust(f"{service.base_url}/saml/metadata")
    saml_idp.max_age_seconds = CACHE_SECONDS
    yield SamlWorld(store, service, saml_idp, Journal(tmp_path / "journal.db"))


@dataclass
class Watch:
    """Signs in through the SP without pause (both bindings) and parses its metadata, until stopped."""

    world: SamlWorld
    sign_ins: int = 0
    failures: list[str] = field(default_factory=list)
    metadata: list[tuple[tuple[str, ...], tuple[str, ...]]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def _sign_in(self) -> None:
        while not self._stop.is_set():
            for binding in BINDINGS:
                try:
                    sign_in(f"{self.world.base}/saml/login?binding={binding}")
                except SignInFailed as exc:
                    self.failures.append(str(exc))
                self.sign_ins += 1

    def _sample(self) -> None:
        while not self._stop.is_set():
            served = self.world.served()
            if not self.metadata or self.metadata[-1] != served:
                self.metadata.append(served)
            time.sleep(0.005)

    def __enter__(self) -> Watch:
        self._threads = [threading.Thread(target=t, daemon=True) for t in (self._sign_in, self._sample)]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)


def _in_thread(run: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = run()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


def _waiting_at(world: SamlWorld, step: str, timeout: float = 120) -> tuple[str, str]:
    """The rotation id and flow run id once the run waits at ``step``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for record in world.journal.list(active_only=True):
            waiting = waiting_for(world.journal, record.id, record.flow_run_id)
            if waiting is not None and waiting.step == step:
                return record.id, waiting.flow_run_id
        time.sleep(0.1)
    raise AssertionError(f"the run never waited at {step}")


def _decide(world: SamlWorld, step: str, decision: str = "approve") -> str:
    rotation_id, flow_run_id = _waiting_at(world, step)
    answer = ApprovalDecision(
        decision=decision, approver="bob", reason="test", rotation_id=rotation_id, step=step, decision_id=None
    )
    for _ in range(40):  # the journal says "waiting" a moment before the server has the run paused
        try:
            give_decision(flow_run_id, answer)
            return rotation_id
        except Exception:
            time.sleep(0.25)
    give_decision(flow_run_id, answer)
    return rotation_id


def test_a_full_rotation_signs_everyone_in_and_serves_each_phases_certificates(
    prefect_server, world: SamlWorld, record_property
) -> None:
    old = world.keyset().signing_pair
    key_lines = old.key_text.splitlines()[1:-1]
    started = time.monotonic()
    with Watch(world) as watch:
        summary = rotate_saml_certificate(
            **world.kwargs(), options=world.options(preapproved=Preapproval(approver="bob"))
        )
    record_property("rotation_seconds", round(time.monotonic() - started, 1))
    assert summary["state"] == RotationState.COMPLETED
    new = world.keyset().signing_pair
    assert [p.kid for p in world.keyset().keys] == [new.kid] == [summary["new_kid"]] and new.kid != old.kid
    assert watch.failures == [] and watch.sign_ins >= 10
    record_property("sign_ins", watch.sign_ins)
    record_property("failed_sign_ins", len(watch.failures))
    # Every metadata document served, in order: exactly each phase's certificates, for signing and encryption.
    o, n = old.fingerprint, new.fingerprint
    assert watch.metadata == [((o,), (o,)), ((o, n), (o, n)), ((n, o), (n, o)), ((n,), (n,))]
    # The runbook saw the same at each of its verifications.
    steps = world.journal.steps(summary["rotation_id"])
    for step, listed in [
        ("phase-1-verified", [o]),
        ("phase-2-verified", [o, n]),
        ("phase-4-verified", [n, o]),
        ("phase-5a-verified", [n]),
        ("new-pair-alone-verified", [n]),
    ]:
        served = steps[step].facts["served"][0]
        assert served["signing"] == served["encryption"] == listed, step
        assert served["cache_duration_seconds"] == CACHE_SECONDS
    assert steps["idps-refresh"].completed
    # The old key is gone: the SP no longer decrypts what is encrypted to it. The store keeps the phases' versions
    # no more: CURRENT, and PREVIOUS (phase 5a's document) as every rotation leaves it.
    world.idp.encrypt_to = old.certificate_text
    with pytest.raises(SignInFailed, match="no current key decrypts"):
        sign_in(f"{world.base}/saml/login?binding=post")
    rotation_id = summary["rotation_id"]
    withdrawn = steps["withdraw-old-certificate"].facts["version_id"]
    assert world.stages() == {step_version(rotation_id, "retire"): ["CURRENT"], withdrawn: ["PREVIOUS"]}
    # Neither key reached the service's log, the journal, or Prefect's database, logs and storage.
    drain_prefect_workers()
    prefect_server.database_file()  # its database, dumped into its home when it is PostgreSQL
    key_lines += new.key_text.splitlines()[1:-1]
    for path in [
        world.service.log_path,
        world.journal.path,
        *(p for p in prefect_server.home.rglob("*") if p.is_file()),
    ]:
        content = path.read_bytes()
        assert not any(line.encode() in content for line in key_lines), path


def test_a_failed_verification_rolls_back_to_the_old_pair(world: SamlWorld) -> None:
    """An IdP that never reads the metadata again refuses the new key's signature at phase 4: rolled back."""
    world.idp.max_age_seconds = None
    before, old = world.stages(), world.keyset()
    with pytest.raises(RotationRolledBack, match=r"phase-4-verified failed.*did not accept the SP's signed"):
        rotate_saml_certificate(**world.kwargs(), options=world.options(approve_promote=False))
    (record,) = world.journal.list()
    assert record.state is RotationState.ROLLED_BACK
    assert world.stages() == before and world.keyset().to_secret() == old.to_secret()
    fingerprint = old.signing_pair.fingerprint
    assert world.served() == ((fingerprint,), (fingerprint,))
    assert http_client().get(f"{world.base}/health", timeout=10).json()["saml"]["signing"] == fingerprint
    for binding in BINDINGS:
        assert sign_in(f"{world.base}/saml/login?binding={binding}").answer["encrypted_to"] == fingerprint


def test_rejecting_the_retirement_rolls_back_through_phase_1_without_a_failed_sign_in(world: SamlWorld) -> None:
    """From phase 5a back to the start: the old certificate is published again and read by the IdP before the
    old key signs, and the new key keeps decrypting until the IdP has read metadata without it."""
    before, old = world.stages(), world.keyset()
    options = world.options(approve_promote=False, approve_retire=True)
    with Watch(world) as watch:
        thread, outcome = _in_thread(lambda: rotate_saml_certificate(**world.kwargs(), options=options))
        _decide(world, "approve-drop-old-pair", "reject")
        thread.join(120)
    assert isinstance(outcome.get("error"), RotationRolledBack)
    assert watch.failures == [] and watch.sign_ins >= 10
    o = old.signing_pair.fingerprint
    n = next(fp for (fps, _) in watch.metadata for fp in fps if fp != o)
    # Forward to 5a, then back, one reload per undo: the old certificate returns, then the old key signs again,
    # then the new certificate leaves; its key goes last.
    assert watch.metadata == [
        ((o,), (o,)),
        ((o, n), (o, n)),
        ((n, o), (n, o)),
        ((n,), (n,)),
        ((n, o), (n, o)),
        ((o, n), (o, n)),
        ((o,), (o,)),
    ]
    assert world.stages() == before and world.keyset().to_secret() == old.to_secret()


def test_bad_key_sets_are_refused_before_anything_changes(world: SamlWorld, tmp_path: Path) -> None:
    for name, (document, message) in _bad_documents().items():
        if name == "a wrong subject":
            continue  # the pair in use may have any subject; the new pair's is checked below (CA mode)
        store = open_store(f"local://{tmp_path / 'bad.db'}?secret=bad-{uuid.uuid4().hex[:8]}")
        store.create(document)
        before = store.describe()
        kwargs = {**world.kwargs(), "secret": store.uri.display}
        with pytest.raises(BadInput, match=message) as caught:
            rotate_saml_certificate(**kwargs, options=world.options(approve_promote=False))
        assert "\n" not in str(caught.value) and store.uri.display in str(caught.value), name
        assert store.describe() == before, name
        assert world.journal.list() == [], name  # refused at its first check: not even a journal entry
    with pytest.raises(ValueError, match="has no CN"):
        SamlPolicy(certificate=CertificateProfile(subject="O=Example"))


def test_a_hard_cutover_waits_for_the_certificate_upload(world: SamlWorld) -> None:
    """The IdP holds one certificate, uploaded by a person: it never reads the SP's metadata."""
    world.idp.max_age_seconds = None
    old = world.keyset().signing_pair
    options = world.options(allow_self_approval=False)
    thread, outcome = _in_thread(lambda: rotate_saml_certificate(**world.kwargs(cutover="hard"), options=options))
    rotation_id, _ = _waiting_at(world, "approve-upload")
    # What the person uploads: the certificate the run shows them (in its artifact and its journal).
    shown = world.journal.steps(rotation_id)["show-new-certificate"].facts
    upcoming = SamlKeyset.from_secret(world.store.read(Stage.CURRENT))
    assert upcoming.pair(shown["kid"]).certificate_text == shown["pem"] and shown["status"] == "decrypt"
    assert world.served() == ((old.fingerprint,), (old.fingerprint,))  # the metadata never lists two
    switched = SamlKeyset.from_secret(switch_signing(upcoming.to_secret()))
    world.idp.trust_document(keyset_metadata(switched, f"{world.base}/saml/metadata", f"{world.base}/saml/acs"))
    _decide(world, "approve-upload")
    thread.join(120)
    assert outcome.get("result", {}).get("state") == RotationState.COMPLETED, outcome
    new = world.keyset().signing_pair
    assert new.kid == shown["kid"] and world.served() == ((new.fingerprint,), (new.fingerprint,))
    for binding in BINDINGS:
        assert sign_in(f"{world.base}/saml/login?binding={binding}").answer["encrypted_to"] == new.fingerprint


def test_a_ca_signed_certificate_is_staged_with_rotate_stage(world: SamlWorld, tmp_path: Path) -> None:
    options = world.options(preapproved=Preapproval(approver="bob"))
    thread, outcome = _in_thread(lambda: rotate_saml_certificate(**world.kwargs(issuer="ca"), options=options))
    rotation_id, _ = _waiting_at(world, "stage-certificate")
    csr = world.journal.steps(rotation_id)["show-signing-request"].facts
    assert csr["status"] == "requested" and "BEGIN CERTIFICATE REQUEST" in csr["pem"]
    old = world.keyset().signing_pair.fingerprint
    assert world.served() == ((old,), (old,))  # a requested pair changes nothing for the SP

    def stage(certificate: str) -> Any:
        path = tmp_path / f"{uuid.uuid4().hex}.pem"
        path.write_text(certificate)
        command = ["stage", rotation_id, "--from-file", str(path), "--person", "carol"]
        return CliRunner().invoke(app, [*command, "--journal", world.journal.location])

    now = datetime.now(UTC)
    before = world.store.describe()
    for certificate, message in [
        (_pem(PROFILE)["certificate"], "is for another key than the signing request"),
        (issue_for_request(csr["pem"], now, 30, subject="CN=intruder.example.com"), "subject is 'CN=intruder"),
        (issue_for_request(csr["pem"], now - timedelta(days=40), 30), "expired on"),
        (issue_for_request(csr["pem"], now + timedelta(days=1), 30), "not valid yet"),
        (_garbled(issue_for_request(csr["pem"], now, 30)), "malformed PEM certificate"),
    ]:
        refused = stage(certificate)
        said = " ".join(refused.output.split())  # the console wraps long lines
        assert refused.exit_code == 1 and message in said, said
        assert "error:" in refused.output and "Traceback" not in refused.output
        assert world.store.describe() == before
    assert thread.is_alive()  # still waiting for a good one
    issued = issue_for_request(csr["pem"], now - timedelta(minutes=1), 30)
    staged = stage(issued)
    assert staged.exit_code == 0, staged.output
    thread.join(120)
    assert outcome.get("result", {}).get("state") == RotationState.COMPLETED, outcome
    new = world.keyset().signing_pair
    assert new.kid == csr["kid"] and new.certificate_text.strip() == issued.strip()
    assert world.served() == ((new.fingerprint,), (new.fingerprint,))
    assert json.dumps(world.journal.get(rotation_id).parameters).count("BEGIN CERTIFICATE") == 0


def test_rotate_saml_refuses_bad_input_in_one_line(world: SamlWorld, tmp_path: Path) -> None:
    bad = open_store(f"local://{tmp_path / 'bad.db'}?secret=bad")
    document, _ = _bad_documents()["a key that does not match its certificate"]
    bad.create(document)
    before = bad.describe()
    url = ["--metadata-url", f"{world.base}/saml/metadata", "--journal", world.journal.location, "--no-approval"]
    for arguments, message in [
        ([world.secret, "--subject", "O=Example", *url], "has no CN"),
        ([world.secret, "--subject", "CN=sp", "--key-type", "dsa", *url], "key_type"),
        (["nowhere://x", "--subject", "CN=sp", *url], "nowhere"),
        ([bad.uri.display, "--subject", "CN=auth.example.com", *url], "the key does not match the certificate"),
    ]:
        refused = CliRunner().invoke(app, ["saml", *arguments])
        said = " ".join(refused.output.split())
        assert refused.exit_code == 1 and said.startswith("error:") and message in said, said
        assert "Traceback" not in refused.output
    assert bad.describe() == before and world.journal.list() == []


def test_rotate_saml_rolls_the_certificate_over(world: SamlWorld) -> None:
    old = world.keyset().signing_pair
    base = world.base
    rotated = CliRunner().invoke(
        app,
        [
            "saml",
            world.secret,
            "--subject",
            PROFILE["subject"],
            "--metadata-url",
            f"{base}/saml/metadata",
            "--login-url",
            f"{base}/saml/login?binding=redirect",
            "--reload-url",
            f"{base}/reload",
            "--grace",
            "0.5",
            "--yes",
            "--approver",
            "bob",
            "--journal",
            world.journal.location,
        ],
    )
    assert rotated.exit_code == 0, rotated.output
    assert json.loads(rotated.output[rotated.output.index("{") :])["state"] == RotationState.COMPLETED
    new = world.keyset().signing_pair
    assert new.kid != old.kid and world.served() == ((new.fingerprint,), (new.fingerprint,))
    assert new.certificate is not None and new.key.key_size == 3072  # RSA 3072 by default
    assert new.certificate.subject.rfc4514_string() == PROFILE["subject"]


def test_the_daily_check_starts_a_rotation_once_two_thirds_of_the_validity_have_passed(
    prefect_server, tmp_path: Path
) -> None:
    from prefect import get_client

    from flows.saml_expiry import check_saml_certificate_expiry

    name = f"test-{uuid.uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow(rotate_saml_certificate)
        deployment_id = client.create_deployment(flow_id=flow_id, name=name)
    deployment = f"rotate-saml-certificate/{name}"
    aged, fresh = (open_store(f"local://{tmp_path / 'store.db'}?secret={n}") for n in ("aged", "fresh"))
    aged.create(json.dumps({"keys": [_pem(PROFILE, now=datetime.now(UTC) - timedelta(days=61))]}))  # of 90
    fresh.create(json.dumps({"keys": [_pem(PROFILE, now=datetime.now(UTC) - timedelta(days=59))]}))

    due = check_saml_certificate_expiry(aged.uri.display, deployment)
    (certificate,) = due["certificates"]
    assert certificate["due"] and 28.9 < certificate["days_left"] < 29.1
    with get_client(sync_client=True) as client:
        started = client.read_flow_run(uuid.UUID(due["rotation_flow_run"]))
    assert started.deployment_id == deployment_id
    # Run again before the rotation has staged its pair (the next day, or after being killed): the same run.
    again = check_saml_certificate_expiry(aged.uri.display, deployment)
    assert again["rotation_flow_run"] == due["rotation_flow_run"]

    not_yet = check_saml_certificate_expiry(fresh.uri.display, deployment)
    assert not not_yet["certificates"][0]["due"] and not_yet["rotation_flow_run"] is None
    sooner = check_saml_certificate_expiry(fresh.uri.display, deployment, renew_before_days=40)
    assert sooner["rotation_flow_run"] is not None
