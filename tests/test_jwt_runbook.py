"""The JWT runbook end to end: the example auth service serving while its key rotates, on the local and AWS stores."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from flows.jwt import JwtPolicy, rotate_jwt_signing_key
from rotation import RotationOptions, RotationRolledBack
from rotation.approval import ApprovalDecision, NotWaitingForApproval, give_decision, waiting_for
from rotation.journal import Journal, RotationInProgress, RotationState
from stores import SecretStore, Stage
from targets.consumers import CommandRestart, Consumer, HttpReload, NoRestart
from targets.http import http_client
from targets.jwt.keyset import JwtKeyset, new_key

SHORT = JwtPolicy(token_lifetime_seconds=2, grace_seconds=1)


@pytest.fixture(params=["local", "aws"])
def keyset_store(request: pytest.FixtureRequest) -> SecretStore:
    store: SecretStore = request.getfixturevalue(f"{request.param}_store_factory")()
    store.create(JwtKeyset(keys=[new_key("HS256", 512)]).to_secret())
    return store


@pytest.fixture
def journal(tmp_path) -> Journal:
    return Journal(tmp_path / "journal.db")


def options(journal: Journal, **overrides: object) -> RotationOptions:
    values = {"started_by": "alice", "journal": journal.location, "approval_timeout_seconds": 60, **overrides}
    return RotationOptions(**values)


def consumer_of(service) -> Consumer:
    return Consumer(
        name="auth", restart=HttpReload(url=f"{service.base_url}/reload"), verify_url=f"{service.base_url}/me"
    )


def token(service) -> str:
    return http_client().post(f"{service.base_url}/token", json={"sub": "client"}, timeout=5).json()["access_token"]


def accepted(service, bearer: str) -> bool:
    return (
        http_client().get(f"{service.base_url}/me", headers={"Authorization": f"Bearer {bearer}"}, timeout=5).is_success
    )


def signing_kid(service) -> str:
    return http_client().get(f"{service.base_url}/health", timeout=5).json()["signing_kid"]


class Approver:
    """Answers the approvals of rotations in ``journal`` from another thread, as a person in the UI would."""

    def __init__(self, journal: Journal, answers: list[dict]) -> None:
        self.journal, self.answers = journal, list(answers)
        self.given: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while self.answers and not self._stop.is_set():
            for record in self.journal.list(active_only=True):
                waiting = waiting_for(self.journal, record.id, record.flow_run_id)
                if waiting is not None:
                    decision = ApprovalDecision(**self.answers[0], rotation_id=record.id, step=waiting.step)
                    try:
                        give_decision(waiting.flow_run_id, decision)
                    except NotWaitingForApproval:
                        continue
                    self.given.append(self.answers.pop(0))
                    time.sleep(0.5)
            time.sleep(0.2)

    def __enter__(self) -> Approver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


BOB_APPROVES = {"decision": "approve", "approver": "bob", "reason": "change 42"}


@dataclass
class Client:
    """Calls ``verifier`` about every 20 ms with a valid token from ``issuer``, renewed before it expires."""

    issuer: object
    verifier: object
    calls: int = 0
    rejections: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        bearer, issued = token(self.issuer), time.monotonic()
        while not self.stop.is_set():
            if time.monotonic() - issued > 0.5:  # the service's tokens live 2 s
                bearer, issued = token(self.issuer), time.monotonic()
            self.calls += 1
            if not accepted(self.verifier, bearer):
                self.rejections.append(f"call {self.calls}")
            time.sleep(0.02)


@pytest.fixture
def steady_client() -> Iterator[Callable[..., Client]]:
    clients: list[tuple[Client, threading.Thread]] = []

    def start(issuer, verifier=None) -> Client:
        client = Client(issuer, verifier or issuer)
        thread = threading.Thread(target=client.run, daemon=True)
        thread.start()
        clients.append((client, thread))
        return client

    yield start
    for client, thread in clients:
        client.stop.set()
        thread.join(10)


def test_a_full_rotation_with_a_client_that_never_sees_a_rejection(
    prefect_server, keyset_store, journal, auth_service, steady_client, record_property
) -> None:
    service = auth_service(keyset_store.uri.display, token_lifetime=2)
    old_kid = signing_kid(service)
    old_token = token(service)
    client = steady_client(service)
    with Approver(journal, [BOB_APPROVES]) as approver:
        summary = rotate_jwt_signing_key(
            keyset_store.uri.display, consumers=[consumer_of(service)], policy=SHORT, options=options(journal)
        )
    client.stop.set()
    time.sleep(0.1)
    record_property("calls", client.calls)
    record_property("rejections", len(client.rejections))
    assert client.calls > 20  # it called all along (every ~20 ms; how many depends on how fast the rotation ran)
    assert client.rejections == []
    assert approver.given == [BOB_APPROVES]

    assert summary["state"] == RotationState.COMPLETED
    current = JwtKeyset.from_secret(keyset_store.read(Stage.CURRENT))
    new_kid = summary["new_kid"]
    assert [k.kid for k in current.keys] == [new_kid] != [old_kid]
    assert {k.kid for k in JwtKeyset.from_secret(keyset_store.read(Stage.PREVIOUS)).keys} == {new_kid, old_kid}
    assert keyset_store.describe().version_at(Stage.PENDING) is None
    assert signing_kid(service) == new_kid
    assert not accepted(service, old_token)
    assert accepted(service, token(service))
    record = journal.get(summary["rotation_id"])
    assert record.retired_at is not None
    approvals = [e for e in journal.events(record.id) if e.status == "approved"]
    assert [a.details["approver"] for a in approvals] == ["bob"]


def test_a_failed_verification_rolls_back_to_the_old_keyset(
    prefect_server, keyset_store, journal, auth_service
) -> None:
    service = auth_service(keyset_store.uri.display)
    stale = auth_service(keyset_store.uri.display)  # never reloaded: it will refuse tokens of the new key
    before = keyset_store.describe()
    old_kid, old_token = signing_kid(service), token(service)
    consumers = [consumer_of(service), Consumer(name="stale", restart=NoRestart(), verify_url=f"{stale.base_url}/me")]
    with pytest.raises(RotationRolledBack, match="stale rejected a token"):
        rotate_jwt_signing_key(
            keyset_store.uri.display,
            consumers=consumers,
            policy=SHORT,
            options=options(journal, approve_promote=False),
        )
    after = keyset_store.describe()
    assert after.version_at(Stage.CURRENT) == before.version_at(Stage.CURRENT)
    assert after.version_at(Stage.PREVIOUS) == before.version_at(Stage.PREVIOUS)
    assert after.version_at(Stage.PENDING) is None
    assert signing_kid(service) == old_kid  # restarted again after the revert
    assert accepted(service, old_token)
    (record,) = journal.list()
    assert record.state is RotationState.ROLLED_BACK
    assert journal.list(active_only=True) == []


@pytest.mark.parametrize(
    ("answers", "overrides", "reason"),
    [
        ([{"decision": "reject", "approver": "bob", "reason": "not during the release"}], {}, "bob rejected"),
        ([], {"approval_timeout_seconds": 3}, "nobody approved"),
        (
            [{"decision": "approve", "approver": " Alice ", "reason": "mine"}],
            {"approval_timeout_seconds": 6},
            "nobody approved",
        ),
    ],
    ids=["rejected", "timed-out", "self-approval-refused"],
)
def test_a_rejection_or_no_approval_rolls_back(
    prefect_server, local_store_factory, journal, auth_service, answers, overrides, reason
) -> None:
    store = local_store_factory()
    store.create(JwtKeyset(keys=[new_key("HS256", 512)]).to_secret())
    service = auth_service(store.uri.display)
    before, old_kid = store.describe(), signing_kid(service)
    with Approver(journal, answers), pytest.raises(RotationRolledBack, match=reason):
        rotate_jwt_signing_key(
            store.uri.display, consumers=[consumer_of(service)], policy=SHORT, options=options(journal, **overrides)
        )
    after = store.describe()
    assert after.version_at(Stage.CURRENT) == before.version_at(Stage.CURRENT)
    assert after.version_at(Stage.PENDING) is None
    assert signing_kid(service) == old_kid
    assert journal.list()[0].state is RotationState.ROLLED_BACK


def test_a_second_rotation_of_the_same_secret_is_refused(prefect_server, local_store_factory, journal) -> None:
    store = local_store_factory()
    store.create(JwtKeyset(keys=[new_key("HS256", 512)]).to_secret())
    first: dict[str, object] = {}

    def run_first() -> None:
        try:
            rotate_jwt_signing_key(store.uri.display, policy=SHORT, options=options(journal))
        except Exception as exc:
            first["error"] = exc

    thread = threading.Thread(target=run_first, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not journal.list(active_only=True) and time.monotonic() < deadline:
        time.sleep(0.2)
    (running,) = journal.list(active_only=True)
    with pytest.raises(RotationInProgress, match=f"rotation {running.id} .* already in progress"):
        rotate_jwt_signing_key(store.uri.display, policy=SHORT, options=options(journal))
    with Approver(journal, [{"decision": "reject", "approver": "bob", "reason": "test over"}]):
        thread.join(60)
    assert isinstance(first["error"], RotationRolledBack)
    assert len(journal.list()) == 1


def test_an_es256_keyset_rotates_and_its_jwks_follows(prefect_server, local_store_factory, journal, auth_service):
    store = local_store_factory()
    store.create(JwtKeyset(keys=[new_key("ES256")]).to_secret())
    service = auth_service(store.uri.display)
    old_kid, old_token = signing_kid(service), token(service)
    jwks = http_client().get(f"{service.base_url}/.well-known/jwks.json", timeout=5).json()
    assert [k["kid"] for k in jwks["keys"]] == [old_kid]
    summary = rotate_jwt_signing_key(
        store.uri.display,
        consumers=[consumer_of(service)],
        policy=JwtPolicy(algorithm="ES256", token_lifetime_seconds=1, grace_seconds=1),
        options=options(journal, approve_promote=False),
    )
    new_kid = summary["new_kid"]
    jwks = http_client().get(f"{service.base_url}/.well-known/jwks.json", timeout=5).json()
    assert [(k["kid"], k["kty"], k["crv"]) for k in jwks["keys"]] == [(new_kid, "EC", "P-256")]
    assert all("d" not in k for k in jwks["keys"])  # public keys only
    assert not accepted(service, old_token)
    assert accepted(service, token(service))


@pytest.mark.parametrize("publish_first", [True, False], ids=["publish-first", "two-phase"])
def test_replicas_reloading_one_by_one_accept_each_others_tokens_only_with_publish_first(
    prefect_server, local_store_factory, journal, auth_service, steady_client, record_property, publish_first
) -> None:
    store = local_store_factory()
    store.create(JwtKeyset(keys=[new_key("HS256", 512)]).to_secret())
    first, second = (auth_service(store.uri.display, token_lifetime=2) for _ in range(2))
    # The second replica reloads a second after the first, as in a rolling restart.
    slow_reload = CommandRestart(
        command=[sys.executable, "-c", SLOW_RELOAD, f"{second.base_url}/reload"], timeout_seconds=30
    )
    consumers = [consumer_of(first), Consumer(name="second", restart=slow_reload, verify_url=f"{second.base_url}/me")]
    client = steady_client(first, second)  # tokens issued by the first replica, checked by the second
    summary = rotate_jwt_signing_key(
        store.uri.display,
        consumers=consumers,
        policy=JwtPolicy(token_lifetime_seconds=2, grace_seconds=1, publish_first=publish_first),
        options=options(journal, approve_promote=False),
    )
    client.stop.set()
    time.sleep(0.1)
    record_property("calls", client.calls)
    record_property("rejections", len(client.rejections))
    assert summary["state"] == RotationState.COMPLETED
    assert signing_kid(first) == signing_kid(second) == summary["new_kid"]
    if publish_first:
        assert client.rejections == []
        assert journal.steps(summary["rotation_id"])["switch-signing-key"].completed
    else:  # why publish_first exists: for about a second the second replica refuses the first one's new tokens
        assert len(client.rejections) >= 3  # about 50 calls a second when the machine is quiet, fewer under load


SLOW_RELOAD = "import sys, time, httpx; time.sleep(1); httpx.post(sys.argv[1], timeout=10).raise_for_status()"


FAIL_SECOND_RESTART = (  # the second restart fails, retry included; the others succeed
    "import pathlib, sys; p = pathlib.Path(sys.argv[1]); n = int(p.read_text() or 0) + 1 if p.exists() else 1; "
    "p.write_text(str(n)); sys.exit(1 if n in (2, 3) else 0)"
)


def test_a_failure_after_the_switch_rolls_back_both_promotions(
    prefect_server, local_store_factory, journal, auth_service, tmp_path
) -> None:
    store = local_store_factory()
    store.create(JwtKeyset(keys=[new_key("HS256", 512)]).to_secret())
    service = auth_service(store.uri.display)
    before, old_kid, old_token = store.describe(), signing_kid(service), token(service)
    flaky = CommandRestart(command=[sys.executable, "-c", FAIL_SECOND_RESTART, str(tmp_path / "calls")])
    with pytest.raises(RotationRolledBack, match="exited with status 1"):
        rotate_jwt_signing_key(
            store.uri.display,
            consumers=[consumer_of(service), Consumer(name="flaky", restart=flaky)],
            policy=JwtPolicy(token_lifetime_seconds=1, grace_seconds=0, publish_first=True),
            options=options(journal, approve_promote=False),
        )
    after = store.describe()
    assert after.version_at(Stage.CURRENT) == before.version_at(Stage.CURRENT)
    assert after.version_at(Stage.PREVIOUS) == before.version_at(Stage.PREVIOUS)
    assert after.version_at(Stage.PENDING) is None
    assert signing_kid(service) == old_kid
    assert accepted(service, old_token)
    (record,) = journal.list()
    assert [u.step for u in journal.undos(record.id) if u.task == "undo_switch_signing_key" and u.done] == [
        "switch-signing-key"
    ]
