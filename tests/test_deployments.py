"""The runbooks as deployments run by a real process worker: prefect.yaml deploys, and a long grace period holds no
worker (the run ends and a follow-up run, scheduled at the due time, carries the rotation on)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

import pytest
import yaml
from prefect import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, FlowRunFilter, FlowRunFilterState
from prefect.deployments import run_deployment
from prefect.events import emit_event
from prefect.states import Scheduled

from flows.jwt import rotate_jwt_signing_key
from rotation.journal import Journal, RotationState
from rotation.trail import audit_trail
from stores import Stage
from targets.jwt.keyset import JwtKeyset, new_key

ROOT = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).parent / "prefect")


def prefect_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ROTATE_PROJECT_DIR": str(ROOT)}
    return subprocess.run(
        [PREFECT, "--no-prompt", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180
    )


@pytest.fixture(scope="module")
def worker(prefect_server) -> Iterator[str]:
    created = prefect_cli("work-pool", "create", "rotation", "--type", "process", "--overwrite")
    assert created.returncode == 0, created.stdout + created.stderr
    log = prefect_server.home / "worker.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [PREFECT, "worker", "start", "--pool", "rotation", "--prefetch-seconds", "5"],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its flow runs' processes with it, to stop them all
        )
    try:
        yield "rotation"
    finally:
        # Every test waited for its runs to end. Prefect's worker forwards a SIGTERM as SIGINT to itself and then
        # often does not exit (seen waiting past 90 s): Ctrl-C the group, then kill it.
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def test_prefect_yaml_deploys_every_runbook(worker) -> None:
    deployed = prefect_cli("deploy", "--all")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    with get_client(sync_client=True) as client:
        names = {d.name for d in client.read_deployments()}
    written = {d["name"] for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]}
    assert {"jwt-production", "rollback-rotation", "resume-rotation", "restore-secrets-production"} <= written
    assert written <= names  # every deployment prefect.yaml declares


def _wait_for_final(flow_run_id: UUID, timeout: float = 180):
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(flow_run_id)
            if run.state and run.state.is_final():
                return run
            if time.monotonic() > deadline:
                raise TimeoutError(f"flow run {flow_run_id} is still {run.state and run.state.name}")
            time.sleep(1)


def _follow_ups(deployment_id: UUID) -> list:
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type={"any_": ["SCHEDULED"]})),
        )


def test_a_long_grace_period_is_handed_to_a_scheduled_follow_up_run(worker, local_store_factory, tmp_path) -> None:
    store = local_store_factory()
    store.create(JwtKeyset(keys=[new_key("HS256", 512)]).to_secret())
    journal = Journal(tmp_path / "journal.db")
    deployment_id = rotate_jwt_signing_key.from_source(str(ROOT), "flows/jwt.py:rotate_jwt_signing_key").deploy(
        name="jwt-long-grace", work_pool_name=worker, build=False, print_next_steps=False
    )
    parameters = {
        "secret": store.uri.display,
        "policy": {"token_lifetime_seconds": 3600, "grace_seconds": 3600},
        "options": {"approve_promote": False, "max_sleep_seconds": 60, "journal": str(journal.path)},
    }
    started = datetime.now(UTC)
    first = run_deployment(deployment_id, parameters=parameters, timeout=0)
    assert _wait_for_final(first.id).state.is_completed()

    (record,) = journal.list()
    assert record.state is RotationState.WAITING
    assert record.retired_at is None
    (follow_up,) = _follow_ups(deployment_id)
    due = follow_up.expected_start_time
    assert started + timedelta(hours=2) <= due <= datetime.now(UTC) + timedelta(hours=2)
    assert follow_up.parameters["options"]["resume"] == record.id
    current = JwtKeyset.from_secret(store.read(Stage.CURRENT))
    assert len(current.keys) == 2  # promoted: the new key signs, the old one still verifies

    # Started early (by hand, or after a worker restart), the follow-up run waits again for the same due time.
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(follow_up.id, Scheduled(scheduled_time=datetime.now(UTC)), force=True)
    assert _wait_for_final(follow_up.id).state.is_completed()
    assert journal.get(record.id).state is RotationState.WAITING
    assert [(e.action, e.person) for e in audit_trail(journal)][-1] == ("resumed", "automatic")
    (again,) = _follow_ups(deployment_id)
    assert abs((again.expected_start_time - due).total_seconds()) < 1
    assert len(JwtKeyset.from_secret(store.read(Stage.CURRENT)).keys) == 2


def test_a_failed_rollback_pauses_the_deployment_that_started_it(worker) -> None:
    from deployments.automations import install

    assert install() == install()  # installing twice replaces, never duplicates
    deployment_id = rotate_jwt_signing_key.from_source(str(ROOT), "flows/jwt.py:rotate_jwt_signing_key").deploy(
        name="jwt-automation", work_pool_name=worker, build=False, print_next_steps=False
    )
    emit_event(
        event="secret-rotation.step.failed",
        resource={"prefect.resource.id": "secret-rotation.rotation.test", "step": "undo:3:promote"},
        related=[{"prefect.resource.id": f"prefect.deployment.{deployment_id}", "prefect.resource.role": "deployment"}],
        payload={"error": "undo tasks.secrets:revert_secret failed"},
    )
    deadline = time.monotonic() + 60
    with get_client(sync_client=True) as client:
        while not client.read_deployment(deployment_id).paused:
            assert time.monotonic() < deadline, "the deployment was not paused"
            time.sleep(0.5)
        assert len(client.read_automations_by_name(name=install()[0])) == 1
