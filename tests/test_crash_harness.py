"""The crash harness: every runbook SIGKILLed at every step boundary, then resumed or rolled back.

For each registered case (a runbook and its variant) the harness first runs it once to learn its boundaries: before
and after each named step (the kill lands right after the journal write, see ``tests/crash_child.py``), during the
approval pause and during the grace wait. Then, per boundary and in separate trials, it starts the runbook in a fresh
world, kills it there, checks that the credential the store calls CURRENT works against the real target, waits for
the dead run's lease to expire, and resumes it (``flows.recovery.resume_rotation``, approvals given in advance) or
rolls it back (``flows.recovery.rollback_rotation``). It then checks the end state (rotated, or exactly as before;
after retirement a rollback is refused and a resume finishes it), that no lock or lease is left, and that the audit
trail names the person who asked for the recovery.

The suite kills at the boundaries of the steps that change something (stage, apply, promote, restart, retire, an
awaited value, prune) and in every approval pause and grace wait: a step that only looks (a check, a verification,
an approval given in advance, the start or end of a wait) leaves the world as the neighbouring boundary does, and
differs from it only by journal records without an undo (which the journal writes with the next change anyway).
A kill right after a step's completion finds that completion still in the dead run's memory (the journal defers
it to the next transaction): the resumed run does that step again, and a rollback undoes it.
``CRASH_ALL_POINTS=1`` kills at every boundary, the looking steps' too (about twice the trials).

The flows that change no secret (drill, posture, SAML expiry) are killed after each task call and run again
(``CHECK_CASES``, at the end of this module).

A later runbook joins by adding one entry to ``CASES``: a ``World`` factory that makes a fresh secret and target,
and says how the target is checked. The totals show in the "measured" section of pytest's summary.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import pytest
from prefect import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId

from errors import Refused
from flows.recovery import resume_rotation, rollback_rotation
from rotation.approval import Preapproval, waiting_for
from rotation.journal import Journal, RotationState
from rotation.staging import stage_value
from rotation.trail import audit_trail
from stores import SecretStore, Stage, open_store
from stores.errors import SecretNotFound
from targets.backup import scratch
from targets.backup.archive import new_id
from targets.http import http_client
from targets.jwt.keyset import JwtKeyset, new_key, verify_token
from targets.saml.certificates import CertificateProfile
from targets.saml.keyset import SamlKeyset, new_pair
from targets.saml.metadata import parse_metadata
from targets.saml.sign_in import sign_in
from tasks.backup import BackupRef, write_backup
from tests.crash_child import CHECKS
from tests.fixtures.crash import APPROVER, OPERATOR, run_child
from tests.fixtures.postgres import PgApp
from tests.fixtures.ses import SesAccount
from tests.fixtures.smtp_server import SmtpServer
from tests.leaks import canary


class World(Protocol):
    """One fresh secret and its target, for one trial."""

    runbook: str
    kwargs: dict[str, Any]  # the flow's parameters but ``options``

    def works(self) -> bool:
        """The credential the store calls CURRENT works against the real target now."""

    def snapshot(self) -> Any:
        """Everything a rollback must restore exactly: stages, the target's state, what consumers hold."""

    def rotated(self, rotation_id: str) -> bool:
        """The rotation's end state: the new credential current and working, the old one retired as configured."""


def _stages(store: SecretStore) -> dict[str, list[str]]:
    return {v.version_id: list(v.stages) for v in store.describe().versions if v.stages}


@dataclass
class JwtWorld:
    store: SecretStore
    service: Any
    publish_first: bool
    runbook: str = "jwt-signing-key"

    @property
    def kwargs(self) -> dict[str, Any]:
        base = self.service.base_url
        return {
            "secret": self.store.uri.display,
            "consumers": [
                {"name": "auth", "restart": {"kind": "http", "url": f"{base}/reload"}, "verify_url": f"{base}/me"}
            ],
            "policy": {"token_lifetime_seconds": 0, "grace_seconds": 0.5, "publish_first": self.publish_first},
        }

    def works(self) -> bool:
        """The service accepts the tokens it issues, and a replica loading CURRENT now would accept them too."""
        base, http = self.service.base_url, http_client()
        issued = http.post(f"{base}/token", json={"sub": "harness"}, timeout=5).json()["access_token"]
        accepted = http.get(f"{base}/me", headers={"Authorization": f"Bearer {issued}"}, timeout=5)
        try:
            verify_token(JwtKeyset.from_secret(self.store.read(Stage.CURRENT)), issued)
        except Exception:
            return False
        return accepted.is_success

    def snapshot(self) -> Any:
        health = http_client().get(f"{self.service.base_url}/health", timeout=5).json()
        return _stages(self.store), health["signing_kid"], sorted(health["kids"])

    def rotated(self, rotation_id: str) -> bool:
        current = JwtKeyset.from_secret(self.store.read(Stage.CURRENT))
        health = http_client().get(f"{self.service.base_url}/health", timeout=5).json()
        return len(current.keys) == 1 and health["kids"] == [current.signing_key.kid] and self.works()


@dataclass
class PostgresWorld:
    app: PgApp
    strategy: str
    runbook: str = "postgres-credentials"

    @property
    def kwargs(self) -> dict[str, Any]:
        return {"secret": self.app.uri, "policy": {"strategy": self.strategy, "grace_seconds": 0.5, "retire": "keep"}}

    def works(self) -> bool:
        current = self.app.current()
        return self.app.can_login(current["username"], current["password"])

    def snapshot(self) -> Any:
        # Which password logs in as whom, not the verifiers: setting the same password again salts it anew.
        users = [self.app.user, f"{self.app.user}_clone"]
        return _stages(self.app.secret), self.app.roles(), [self.app.can_login(u, self.app.password) for u in users]

    def rotated(self, rotation_id: str) -> bool:
        current = self.app.current()
        moved = current["password"] != self.app.password
        if self.strategy == "alternating-users":
            moved = moved and current["username"] == f"{self.app.user}_clone"
        return moved and self.app.secret.describe().version_at(Stage.CURRENT) == rotation_id and self.works()


@dataclass
class RedisWorld:
    server: Any
    secret: SecretStore
    admin: SecretStore
    runbook: str = "redis-password"

    @property
    def kwargs(self) -> dict[str, Any]:
        return {
            "secret": self.secret.uri.display,
            "admin_secret": self.admin.uri.display,
            "policy": {"grace_seconds": 0.5},
        }

    def works(self) -> bool:
        return self.server.can_login(json.loads(self.secret.read(Stage.CURRENT))["password"])

    def snapshot(self) -> Any:
        return _stages(self.secret), self.server.password_hashes()

    def rotated(self, rotation_id: str) -> bool:
        current = self.secret.describe().version_at(Stage.CURRENT)
        return current == rotation_id and len(self.server.password_hashes()) == 1 and self.works()


@dataclass
class RestoreWorld:
    """A signed backup of three secrets and a target store holding one of them with another value (updated), one
    as backed up (unchanged), and not the third, whose backup has a PREVIOUS version too (created in two writes)."""

    backup: BackupRef
    into: str
    before: dict[str, str]  # target URI -> its value before the restore
    backed_up: dict[str, str]  # target URI -> the CURRENT value the backup holds for it
    runbook: str = "restore"

    @property
    def kwargs(self) -> dict[str, Any]:
        return {"backup": self.backup.model_dump(), "into": self.into}

    def works(self) -> bool:
        """Every target secret that existed before still reads a value: its own, or the one restored over it."""
        return all(open_store(uri).read() in (value, self.backed_up[uri]) for uri, value in self.before.items())

    def snapshot(self) -> Any:
        described = {}
        for uri in self.backed_up:
            try:
                described[uri] = open_store(uri).describe()
            except SecretNotFound:
                described[uri] = None
        return described

    def rotated(self, rotation_id: str) -> bool:
        return all(open_store(uri).read() == value for uri, value in self.backed_up.items())


@dataclass
class SamlWorld:
    """The auth service as a SAML SP with its key set, and a pysaml2 IdP that reads the SP's metadata again at a
    sign-in once its copy is ``IDP_MAX_AGE`` old (shorter than the runbook's wait for IdPs)."""

    store: SecretStore
    service: Any
    idp: Any
    runbook: str = "saml-certificate"

    @property
    def kwargs(self) -> dict[str, Any]:
        base = self.service.base_url
        return {
            "secret": self.store.uri.display,
            "service_providers": [
                {
                    "name": "auth",
                    "metadata_url": f"{base}/saml/metadata",
                    "login_urls": [f"{base}/saml/login?binding=redirect"],  # one sign-in per check: trials are many
                }
            ],
            "consumers": [{"name": "auth", "restart": {"kind": "http", "url": f"{base}/reload"}}],
            "policy": {
                "certificate": {"subject": "CN=auth.example.com", "rsa_bits": 2048},
                "refresh_wait_seconds": 0.5,
                "grace_seconds": 0.5,
            },
        }

    def works(self) -> bool:
        """A user signs in through the SP, and CURRENT is a key set an SP can load."""
        try:
            SamlKeyset.from_secret(self.store.read(Stage.CURRENT))
            sign_in(f"{self.service.base_url}/saml/login?binding=post")
        except Exception:
            return False
        return True

    def _serves(self) -> tuple[Any, ...]:
        health = http_client().get(f"{self.service.base_url}/health", timeout=5).json()["saml"]
        metadata = parse_metadata(http_client().get(f"{self.service.base_url}/saml/metadata", timeout=5).content)
        return health["signing"], sorted(health["decrypting"]), metadata.signing, metadata.encryption

    def snapshot(self) -> Any:
        return _stages(self.store), self._serves()

    def rotated(self, rotation_id: str) -> bool:
        pair = SamlKeyset.from_secret(self.store.read(Stage.CURRENT)).keys
        signing = pair[0].fingerprint
        return len(pair) == 1 and self._serves() == (signing, [signing], (signing,), (signing,)) and self.works()


#: The harness IdP reads the SP's metadata again once its copy is this old (the runbook waits 0.5 s for IdPs).
IDP_MAX_AGE = 0.4


@dataclass
class SesWorld:
    account: SesAccount
    environ: dict[str, str]
    runbook: str = "smtp-credentials"

    @property
    def kwargs(self) -> dict[str, Any]:
        policy = {"grace_seconds": 0.5, "delete_after_seconds": 0.5, "propagation_seconds": 10}
        return {"secret": self.account.uri, "policy": policy}

    def works(self) -> bool:
        return self.account.works()

    def snapshot(self) -> Any:
        return _stages(self.account.store), self.account.keys()

    def rotated(self, rotation_id: str) -> bool:
        store = self.account.store
        current = json.loads(store.read(Stage.CURRENT))["username"]
        on_time = store.describe().version_at(Stage.CURRENT) == rotation_id
        return on_time and self.account.keys() == {current: "Active"} and self.works()


@dataclass
class HandSetSmtpWorld:
    """A mail provider that keeps the old password valid until a person revokes it, and that person: when the run
    asks, they set a new password in the provider's console and stage it (``rotate stage``); once they have
    approved the revocation, they revoke the old password, as the question tells them."""

    server: SmtpServer
    store: SecretStore
    old: str
    runbook: str = "smtp-credentials"

    @property
    def kwargs(self) -> dict[str, Any]:
        return {"secret": self.store.uri.display, "policy": {"grace_seconds": 0.5, "revoke_wait_seconds": 60}}

    def _current(self) -> dict[str, Any]:
        return json.loads(self.store.read(Stage.CURRENT))

    def works(self) -> bool:
        current = self._current()
        return self.server.accepts(current["username"], current["password"])

    def snapshot(self) -> Any:
        return _stages(self.store), self.server.accepts(SMTP_USER, self.old)

    def rotated(self, rotation_id: str) -> bool:
        on_time = self.store.describe().version_at(Stage.CURRENT) == rotation_id
        return on_time and self.works() and not self.server.accepts(SMTP_USER, self.old)

    @contextmanager
    def attend(self, journal: Journal) -> Iterator[Person]:
        """The person, at work while the runbook runs (killed, resumed or rolled back) with this journal."""
        stop = threading.Event()
        troubles: list[str] = []
        answered: set[tuple[str, str | None, str]] = set()  # one answer per pause (a resumed run pauses anew)
        tried: dict[tuple[str, str | None, str], float] = {}  # a pause whose run seemed stopped, and when
        passwords: dict[str, str] = {}  # one new password per rotation, entered again until a run takes it

        def look_and_act() -> None:
            for record in journal.list(active_only=True) if journal.path.exists() else []:
                waiting = waiting_for(journal, record.id, record.flow_run_id)
                pause = (record.id, record.flow_run_id, waiting.question if waiting else "")
                due = tried.get(pause, 0) + 1 <= time.monotonic()
                if waiting is not None and waiting.step == "new-password" and pause not in answered and due:
                    if record.id not in passwords:
                        passwords[record.id] = canary()
                        self.server.add_password(SMTP_USER, passwords[record.id])
                    staged = stage_value(journal, record.id, passwords[record.id], "person")
                    if staged.decision is not None or staged.taken:
                        answered.add(pause)
                    else:  # "its run has stopped": a live run that was late to renew goes on waiting, so ask again
                        tried[pause] = time.monotonic()
                revoke = journal.steps(record.id).get("approve-revoke-old-password")
                if revoke is not None and revoke.completed:
                    self.server.remove_password(SMTP_USER, self.old)

        def person() -> None:
            while not stop.wait(0.1):
                # Not taken (a busy server, a run that stopped while it asked): the person tries again.
                try:
                    look_and_act()
                except Exception as exc:
                    troubles.append(f"{type(exc).__name__}: {exc}")

        thread = threading.Thread(target=person, name="person", daemon=True)
        thread.start()
        try:
            yield Person(thread, troubles)
        finally:
            stop.set()
            thread.join()


SMTP_USER = "app"


@dataclass
class Person:
    """A world's person at work, for a failed trial to report on."""

    thread: threading.Thread
    troubles: list[str]  # what kept them from acting

    def report(self) -> str:
        frame = sys._current_frames().get(self.thread.ident or 0)
        doing = "".join(traceback.format_stack(frame)[-8:]) if frame is not None else "nothing\n"
        return f"the person could not act: {'; '.join(dict.fromkeys(self.troubles[-50:]))}; now doing:\n{doing}"


Fixtures = Callable[[str], Any]  # a fixture's value by name, resolved once, before trials run in threads


@dataclass(frozen=True)
class CrashCase:
    name: str
    fixtures: tuple[str, ...]  # the factories its worlds are made with
    make: Callable[[Fixtures], World]
    timeout_seconds: int = 900  # pytest-timeout's limit for all its trials (a long runbook has more kill points)


def _jwt(publish_first: bool) -> Callable[[Fixtures], World]:
    def make(fixture: Fixtures) -> World:
        store = fixture("local_store_factory")()
        store.create(JwtKeyset(keys=[new_key("HS256", 512)]).to_secret())
        return JwtWorld(store, fixture("auth_service")(store.uri.display), publish_first)

    return make


def _postgres(strategy: str) -> Callable[[Fixtures], World]:
    return lambda fixture: PostgresWorld(fixture("pg_app")(), strategy)


def _redis(fixture: Fixtures) -> World:
    app_password, admin_password = "canary-" + secrets.token_urlsafe(20), secrets.token_urlsafe(20)
    server = fixture("redis_servers")(app_password=app_password, admin_password=admin_password)
    secret, admin = fixture("local_store_factory")(), fixture("local_store_factory")()
    secret.create(json.dumps({"hosts": [server.node], "username": "app", "password": app_password}))
    admin.create(json.dumps({"username": "admin", "password": admin_password}))
    return RedisWorld(server, secret, admin)


def _restore(fixture: Fixtures) -> World:
    keys, folder = fixture("gpg_keys"), fixture("tmp_path_factory").mktemp("restore-world")
    source, target = f"local://{folder / 'source.db'}?secret=", f"local://{folder / 'target.db'}?secret="
    values = {name: "canary-" + secrets.token_urlsafe(20) for name in ("changed", "created", "same")}
    for name, value in values.items():
        open_store(source + name).create(value)
    values["created"] = "canary-" + secrets.token_urlsafe(20)
    rotation_id = str(uuid.uuid4())
    open_store(source + "created").stage(values["created"], rotation_id)
    open_store(source + "created").promote(rotation_id)
    backup = BackupRef(destination=str(folder / "backups"), backup_id=new_id(), gnupg_home=str(keys.home))
    write_backup.fn(source + "*", backup.destination, [keys.admin], "all", backup.backup_id, None, backup.gnupg_home)
    before = {target + "changed": "canary-" + secrets.token_urlsafe(20), target + "same": values["same"]}
    for uri, value in before.items():
        open_store(uri).create(value)
    return RestoreWorld(backup, target + "*", before, {target + name: value for name, value in values.items()})


def _saml(fixture: Fixtures) -> World:
    store, jwt = fixture("local_store_factory")(), fixture("local_store_factory")()
    jwt.create(JwtKeyset(keys=[new_key("HS256", 512)]).to_secret())
    store.create(SamlKeyset((new_pair(CertificateProfile(subject="CN=auth.example.com", rsa_bits=2048)),)).to_secret())
    idp = fixture("saml_idp_factory")()
    service = fixture("auth_service")(
        jwt.uri.display,
        saml_store=store.uri.display,
        saml_idp_metadata=idp.metadata_url,
        saml_cache_seconds=0,
        start_timeout=120,  # four trials at a time, each SP loading pysaml2 and its IdP's metadata
    )
    idp.trust(f"{service.base_url}/saml/metadata")
    idp.max_age_seconds = IDP_MAX_AGE
    return SamlWorld(store, service, idp)


def _ses(fixture: Fixtures) -> World:
    return SesWorld(fixture("ses_accounts")(), fixture("ses_environment"))


def _smtp_hand_set(fixture: Fixtures) -> World:
    server, store, old = fixture("smtp_servers")("implicit"), fixture("local_store_factory")(), canary()
    server.set_password(SMTP_USER, old)
    store.create(server.secret(SMTP_USER, old))
    return HandSetSmtpWorld(server, store, old)


#: Every runbook of flows/ that rotates a secret, in each of its variants: jwt (both orders), postgres (both
#: strategies), redis_password, saml (the rollover), smtp (Amazon SES, and set by hand with a person at the provider);
#: and the restore of a backup. Recovery runs through flows/recovery.py.
CASES = [  # the longest first: xdist hands them out first
    CrashCase(
        "saml-certificate",
        ("local_store_factory", "saml_idp_factory", "auth_service"),
        _saml,
        timeout_seconds=1800,
    ),
    CrashCase("jwt-publish-first", ("local_store_factory", "auth_service"), _jwt(publish_first=True)),
    CrashCase("jwt", ("local_store_factory", "auth_service"), _jwt(publish_first=False)),
    CrashCase("postgres-alternating-users", ("pg_app",), _postgres("alternating-users")),
    CrashCase("postgres-single-user", ("pg_app",), _postgres("single-user")),
    CrashCase("redis-password", ("redis_servers", "local_store_factory"), _redis),
    CrashCase("restore", ("gpg_keys", "tmp_path_factory"), _restore),
    CrashCase("smtp-ses", ("ses_accounts", "ses_environment"), _ses, timeout_seconds=1500),
    CrashCase("smtp-hand-set", ("smtp_servers", "local_store_factory"), _smtp_hand_set, timeout_seconds=1500),
]
#: Trials run this many at a time: most of a trial is waiting (for a lease to expire, for Prefect).
CONCURRENT_TRIALS = 4


@dataclass
class Outcome:
    """What one trial found; ``problems`` empty when it went as it must."""

    problems: list[str] = field(default_factory=list)
    stuck: bool = False
    without_credential: int = 0


#: Steps that change nothing: they look, or wait for a person or the clock. Killed at their start or their end, a
#: run leaves the world as at the boundary before or after; only the journal differs, by a row without an undo.
LOOKING = {"check", "verify", "approve", "wait"}


def _boundaries(trace: Path, changes_only: bool) -> list[tuple[str, str]]:
    """The kill points of one discovered run; ``changes_only`` leaves out the boundaries of the LOOKING steps (a
    grace wait is still killed while it sleeps, and the approval pause is added by the caller)."""
    points: list[tuple[str, str]] = []
    kinds: dict[str, str] = {}
    for line in trace.read_text().splitlines():
        step, phase, kind = json.loads(line)
        kind = kinds.setdefault(step, kind)  # a completion's line does not repeat its kind
        if not (changes_only and kind in LOOKING):
            points.append((step, phase))
        if kind == "wait" and phase == "started":
            points.append((step, "sleeping"))
    return points


def _wait_for_lease_expiry(journal: Journal, rotation_id: str) -> None:
    deadline = time.monotonic() + 30
    while journal.get(rotation_id).lease_live():
        assert time.monotonic() < deadline, "the killed run's lease never expired"
        time.sleep(0.1)


def _environ(world: World) -> dict[str, str] | None:
    """What the runbook's process needs beyond the forkserver's environment (a world's ``environ``)."""
    return getattr(world, "environ", None)


def _attended(world: World, journal: Journal) -> AbstractContextManager[Person | None]:
    """The person a world's runbook waits for (a world's ``attend``), at work while the block runs."""
    attend = getattr(world, "attend", None)
    return attend(journal) if attend else nullcontext()


def trial(forkserver: Any, world: World, folder: Path, kill: tuple[str, str], pause: bool, recovery: str) -> Outcome:
    """Kill the runbook at ``kill``, check the credential, then recover as ``recovery`` and check the end state."""
    journal = Journal(folder / "journal.db")
    with _attended(world, journal) as person:
        outcome = _trial(forkserver, world, journal, folder, kill, pause, recovery)
        if outcome.problems and person is not None:
            outcome.problems.append(person.report())
    return outcome


def _trial(
    forkserver: Any, world: World, journal: Journal, folder: Path, kill: tuple[str, str], pause: bool, recovery: str
) -> Outcome:
    outcome = Outcome()
    before = world.snapshot()
    code = run_child(forkserver, world.runbook, world.kwargs, journal, folder / "trace", kill, pause, _environ(world))
    if code != -9:
        printed = Path(f"{folder / 'trace'}.log").read_text(errors="replace").strip().splitlines()
        last = "\n".join(printed[-15:])
        outcome.problems.append(f"the run was not killed (exit code {code}); the last it printed:\n{last}")
        return outcome
    (record,) = journal.list()
    if not world.works():
        outcome.without_credential += 1
        outcome.problems.append("no working credential after the kill")
    _wait_for_lease_expiry(journal, record.id)
    try:
        if recovery == "rollback" and journal.get(record.id).retired_at is not None:
            with pytest.raises(Refused, match="point of no return"):
                rollback_rotation(record.id, OPERATOR, journal=journal.location)
            recovery = "resume"  # past retirement the only way is forward
        if recovery == "resume":
            resume_rotation(record.id, OPERATOR, journal=journal.location, preapproved=Preapproval(approver=APPROVER))
        else:
            rollback_rotation(record.id, OPERATOR, journal=journal.location)
    except Exception as exc:
        outcome.problems.append(f"{recovery} failed: {type(exc).__name__}: {exc}")
        return outcome
    done = journal.get(record.id)
    if journal.list(active_only=True) or done.lease_token is not None:
        outcome.stuck = True
        outcome.problems.append(f"a lock or a lease is left ({done.state})")
    if recovery == "resume" and not (done.state is RotationState.COMPLETED and world.rotated(record.id)):
        outcome.problems.append(f"resumed to {done.state}, not rotated")
    if recovery == "rollback" and not (done.state is RotationState.ROLLED_BACK and world.snapshot() == before):
        outcome.problems.append(f"rolled back to {done.state}, not exactly as before")
    if not world.works():
        outcome.without_credential += 1
        outcome.problems.append(f"no working credential after {recovery}")
    named = {(e.action, e.person) for e in audit_trail(journal)}
    if ("resumed" if recovery == "resume" else "rolled back", OPERATOR) not in named:
        outcome.problems.append(f"the audit trail does not name who asked for the {recovery}: {sorted(named)}")
    return outcome


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, id=c.name, marks=pytest.mark.timeout(c.timeout_seconds)) for c in CASES],
)
def test_every_kill_point_can_be_resumed_and_rolled_back(
    case: CrashCase, request: pytest.FixtureRequest, forkserver, short_leases, tmp_path: Path, record_property
) -> None:
    factories = {name: request.getfixturevalue(name) for name in case.fixtures}
    fixture = factories.__getitem__

    # One run to learn the boundaries, its approvals given in advance; the approval pause is one more.
    world, journal = case.make(fixture), Journal(tmp_path / "discover.db")
    trace = tmp_path / "discover.trace"
    with _attended(world, journal) as person:
        code = run_child(forkserver, world.runbook, world.kwargs, journal, trace, None, False, _environ(world))
        assert code == 0, f"the discovery run failed ({code}); {person.report() if person else ''}"
    (first,) = journal.list()
    assert first.state is RotationState.COMPLETED and world.rotated(first.id)
    boundaries = _boundaries(tmp_path / "discover.trace", changes_only=os.environ.get("CRASH_ALL_POINTS") != "1")
    traced = [json.loads(line) for line in (tmp_path / "discover.trace").read_text().splitlines()]
    # Paused: at the first approval, and wherever the run waits for a person to stage a value.
    pauses = [step for step, phase, kind in traced if kind in ("approve", "await") and phase == "started"]
    pause_steps = dict.fromkeys([pauses[0], *(s for s, _, k in traced if k == "await")])
    points = [(point, False) for point in boundaries] + [((step, "paused"), True) for step in pause_steps]

    def one(number: int, kill: tuple[str, str], pause: bool, recovery: str) -> tuple[str, Outcome]:
        folder = tmp_path / f"trial-{number}-{recovery}"
        folder.mkdir()
        return f"{kill[0]}/{kill[1]} then {recovery}", trial(
            forkserver, case.make(fixture), folder, kill, pause, recovery
        )

    with ThreadPoolExecutor(CONCURRENT_TRIALS, thread_name_prefix="trial") as pool:
        futures = [
            pool.submit(one, number, kill, pause, recovery)
            for number, (kill, pause) in enumerate(points)
            for recovery in ("resume", "rollback")
        ]
        outcomes = [future.result() for future in futures]

    problems = [f"{label}: {problem}" for label, outcome in outcomes for problem in outcome.problems]
    record_property("kill_points", len(points))
    record_property("trials", len(outcomes))
    record_property("failures", sum(1 for _, o in outcomes if o.problems))
    record_property("stuck", sum(o.stuck for _, o in outcomes))
    record_property("without_credential", sum(o.without_credential for _, o in outcomes))
    assert problems == [], "\n".join(problems)


def test_a_fleet_killed_mid_way_leaves_each_member_resumable(
    forkserver, short_leases, pg_app, tmp_path: Path, record_property
) -> None:
    """flows/fleet.py: killed while its members rotate, every member it started is resumed on its own, and a new
    fleet run rotates the rest; no member is left locked."""
    apps = [pg_app() for _ in range(4)]
    journal = Journal(tmp_path / "journal.db")
    kwargs = {
        "runbook": "postgres-credentials",
        "secrets": [a.uri for a in apps],
        "parameters": {"policy": {"grace_seconds": 0.5}},
        "max_concurrency": 2,
    }
    # The first member to reach its promotion kills the whole fleet process.
    assert run_child(forkserver, "fleet", kwargs, journal, tmp_path / "trace", ("promote", "completed")) == -9
    started = journal.list()
    assert 1 <= len(started) <= 2  # two at a time: the third had not begun
    for record in started:
        _wait_for_lease_expiry(journal, record.id)
        preapproved = Preapproval(approver=APPROVER)
        assert resume_rotation(record.id, OPERATOR, journal=journal.location, preapproved=preapproved)
    assert all(journal.get(r.id).state is RotationState.COMPLETED for r in started)
    done = {r.secret for r in started}
    rest = run_child(
        forkserver, "fleet", {**kwargs, "secrets": [a.uri for a in apps if a.uri not in done]}, journal,
        tmp_path / "trace-2", None,
    )  # fmt: skip
    assert rest == 0 and journal.list(active_only=True) == []
    for app in apps:
        current = app.current()
        assert current["username"] == f"{app.user}_clone" and app.can_login(current["username"], current["password"])
    record_property("fleet_members_resumed", len(started))


# -- Flows that change no secret ----------------------------------------------------------------------------------
# The restore drill, the posture report and the SAML expiry check hold no rotation, so there is nothing to resume or
# roll back: each is killed right after each of its task calls, then simply run again. Killed, it must leave nothing
# behind (the drill's scratch copy of every restored secret included); run again, it must do its work once (one
# rotation started for a due certificate, not two).


@dataclass
class DrillWorld:
    backup: BackupRef
    scratch_root: Path  # the drill's temporary folder (TMPDIR), this world's alone
    check: str = "restore-drill"

    @property
    def kwargs(self) -> dict[str, Any]:
        return {"destination": self.backup.destination, "gnupg_home": self.backup.gnupg_home}

    def done(self, result: dict[str, Any]) -> bool:
        left = list(self.scratch_root.glob(f"{scratch.PREFIX}*"))  # a killed drill's scratch store, values and key
        return result["result"] == "passed" and result["secrets_checked"] == 2 and left == []


@dataclass
class PostureWorld:
    store: SecretStore
    journal: Path
    check: str = "secret-posture"

    @property
    def kwargs(self) -> dict[str, Any]:
        return {"stores": [self.store.uri.display], "journal": str(self.journal)}

    def done(self, result: dict[str, Any]) -> bool:
        return result["counts"]["secrets"] == 1 and self.store.read() == POSTURE_VALUE


@dataclass
class ExpiryWorld:
    store: SecretStore
    deployment_id: uuid.UUID
    deployment: str
    check: str = "saml-expiry"

    @property
    def kwargs(self) -> dict[str, Any]:
        return {"secret": self.store.uri.display, "rotation_deployment": self.deployment}

    def done(self, result: dict[str, Any]) -> bool:
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(any_=[self.deployment_id]))
            )
        return [str(r.id) for r in runs] == [result["rotation_flow_run"]]  # one rotation, however often checked


POSTURE_VALUE = "canary-posture-value-" + secrets.token_urlsafe(12)


def _drill(fixture: Fixtures) -> DrillWorld:
    keys, folder = fixture("gpg_keys"), fixture("tmp_path_factory").mktemp("drill-world")
    for name in ("one", "two"):
        open_store(f"local://{folder / 'source.db'}?secret={name}").create(canary())
    backup = BackupRef(destination=str(folder / "backups"), backup_id=new_id(), gnupg_home=str(keys.home))
    write_backup.fn(f"local://{folder / 'source.db'}?secret=*", backup.destination, [keys.admin], "all",
                    backup.backup_id, None, backup.gnupg_home)  # fmt: skip
    (folder / "tmp").mkdir()
    return DrillWorld(backup, folder / "tmp")


def _posture(fixture: Fixtures) -> PostureWorld:
    store, folder = fixture("local_store_factory")(), fixture("tmp_path_factory").mktemp("posture-world")
    store.create(POSTURE_VALUE)
    return PostureWorld(store, folder / "journal.db")


def _expiry(fixture: Fixtures) -> ExpiryWorld:
    from flows.saml import rotate_saml_certificate
    from tests.test_saml_rollover import _pem

    store = fixture("local_store_factory")()
    profile = {"subject": "CN=auth.example.com,O=Example", "rsa_bits": 2048, "validity_days": 90}
    store.create(json.dumps({"keys": [_pem(profile, now=datetime.now(UTC) - timedelta(days=61))]}))  # due
    name = f"expiry-{uuid.uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        deployment_id = client.create_deployment(flow_id=client.create_flow(rotate_saml_certificate), name=name)
    return ExpiryWorld(store, deployment_id, f"rotate-saml-certificate/{name}")


CHECK_CASES = [
    ("restore-drill", ("gpg_keys", "tmp_path_factory"), _drill),
    ("secret-posture", ("local_store_factory", "tmp_path_factory"), _posture),
    ("saml-expiry", ("local_store_factory",), _expiry),
]


def _run_check(forkserver: Any, world: Any, trace: Path, kill_after: int) -> int | None:
    from tests.crash_child import run_check

    environ = {"TMPDIR": str(world.scratch_root)} if isinstance(world, DrillWorld) else {}
    spec = {"check": world.check, "kwargs": world.kwargs, "kill_after": kill_after, "trace": str(trace)}
    child = forkserver.Process(target=run_check, args=({**spec, "environ": environ},))
    child.start()
    child.join(180)
    return child.exitcode


@pytest.mark.parametrize("case", [pytest.param(c, id=c[0]) for c in CHECK_CASES])
def test_a_flow_that_changes_no_secret_killed_after_any_task_leaves_nothing_and_runs_again(
    case: tuple[str, tuple[str, ...], Callable[[Fixtures], Any]],
    request: pytest.FixtureRequest,
    forkserver,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    record_property,
) -> None:
    _, fixtures, make = case
    factories = {name: request.getfixturevalue(name) for name in fixtures}
    assert _run_check(forkserver, make(factories.__getitem__), tmp_path / "discover", 0) == 0
    calls = int((tmp_path / "discover").read_text())
    problems = []
    for kill_after in range(1, calls + 1):
        world, trace = make(factories.__getitem__), tmp_path / f"trial-{kill_after}"
        code = _run_check(forkserver, world, trace, kill_after)
        if code != -9:
            problems.append(f"after task call {kill_after}: not killed (exit code {code})")
            continue
        if isinstance(world, DrillWorld):
            monkeypatch.setattr(tempfile, "tempdir", str(world.scratch_root))
        result = CHECKS[world.check](**world.kwargs)
        if not world.done(result):
            problems.append(f"killed after task call {kill_after}, then run again: {result}")
    record_property("kill_points", calls)
    assert problems == [], "\n".join(problems)
