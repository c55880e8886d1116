"""``rotate stack``: the local stack a newcomer starts for the UI, and the ``rotate`` commands that use it.

The stack itself is the session's ``local_stack`` (tests/fixtures/stack.py), shared with the browser test; its
teardown checks that ``rotate stack down`` stops exactly the processes it started.
"""

from __future__ import annotations

import socket
import stat
import time

import httpx

from cli.stack import EXAMPLE
from targets.http import http_client
from tests.fixtures.ports import free_port
from tests.fixtures.stack import LocalStack, rotate, stack_env
from tests.prefect_api import call


def test_the_stack_serves_an_authenticated_api_a_working_ui_and_every_deployment(
    local_stack: LocalStack, record_property
) -> None:
    record_property("stack_up_seconds", round(local_stack.up_seconds, 1))
    state, folder = local_stack.state, local_stack.state_dir
    assert stat.S_IMODE((folder / "stack.json").stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert state.api_url.startswith("http://127.0.0.1:")

    assert http_client().post(f"{state.api_url}/deployments/filter", json={}).status_code == 401
    user, _, password = state.auth_string.partition(":")
    with httpx.Client(base_url=state.api_url, auth=(user, password)) as api:
        names = {d["name"] for d in api.post("/deployments/filter", json={}).json()}
        automations = {a["name"] for a in api.post("/automations/filter", json={}).json()}
    assert {EXAMPLE, "jwt-staging", "orders-db-production", "rollback-rotation", "resume-rotation"} <= names
    assert "secret-rotation: pause the deployment when a rollback fails" in automations

    # The UI is served and calls the API where it is (not on port 4200).
    assert http_client().get(f"{state.ui_url}/v2/").status_code == 200
    assert http_client().get(f"{state.ui_url}/ui-settings").json()["api_url"] == state.api_url

    # The generated auth string is in the state file only, never in a log.
    secret_part = state.auth_string.partition(":")[2]
    for log in folder.glob("*.log"):
        assert secret_part not in log.read_text(errors="replace"), log

    shown = local_stack.rotate("stack", "status")
    assert shown.returncode == 0, shown.stderr
    assert "server: pid" in shown.stdout and "stopped" not in shown.stdout
    assert secret_part not in shown.stdout


def test_the_rotate_command_uses_the_running_stack(local_stack: LocalStack) -> None:
    """A run paused on the stack's server is approved with `rotate approve`, with no PREFECT_API_URL set."""
    user, _, password = local_stack.state.auth_string.partition(":")
    api, auth = local_stack.state.api_url, (user, password)  # the stack's server is on SQLite: asked again on a 503
    (deployment,) = [d for d in call("POST", f"{api}/deployments/filter", json={}, auth=auth) if d["name"] == EXAMPLE]
    options = {**deployment["parameters"]["options"], "started_by": "alice"}
    run = call(
        "POST", f"{api}/deployments/{deployment['id']}/create_flow_run", json={"parameters": {"options": options}},
        auth=auth,
    )  # fmt: skip
    deadline = time.monotonic() + 180
    while call("GET", f"{api}/flow_runs/{run['id']}", auth=auth)["state"]["type"] != "PAUSED":
        assert time.monotonic() < deadline, "the example run did not pause for its approval"
        time.sleep(0.5)
    approved = local_stack.rotate("approve", run["id"], "--approver", "bob", "--reason", "change 1234")
    assert approved.returncode == 0, approved.stdout + approved.stderr
    assert "bob" in approved.stdout
    while (state := call("GET", f"{api}/flow_runs/{run['id']}", auth=auth)["state"])["type"] not in (
        "COMPLETED",
        "FAILED",
    ):
        assert time.monotonic() < deadline + 120, state
        time.sleep(0.5)
    assert state["type"] == "COMPLETED", state


def test_a_port_in_use_is_one_line(tmp_path) -> None:
    with socket.socket() as busy:
        port = free_port()
        busy.bind(("127.0.0.1", port))
        busy.listen()
        refused = rotate(stack_env(tmp_path, tmp_path / "journal.db"), "stack", "up", "--port", str(port))
    assert refused.returncode == 1
    assert " ".join(refused.stderr.split()) == (
        f"error: --port {port}: 127.0.0.1:{port} is already in use; stop what listens there, or pass a free --port"
    )
    assert not (tmp_path / "secret-rotation" / "stack" / "stack.json").exists()


def test_an_unwritable_state_folder_is_one_line(tmp_path) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    env = stack_env(blocked, tmp_path / "journal.db")
    refused = rotate(env, "stack", "up", "--port", str(free_port()))
    assert refused.returncode == 1
    line = " ".join(refused.stderr.split())  # one message (rich may wrap it), no traceback
    assert line.startswith(f"error: state folder {blocked}/secret-rotation/stack: cannot write there")
    assert "XDG_STATE_HOME" in line
