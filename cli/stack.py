"""``rotate stack up|down|status``: the whole local stack for someone who wants the Prefect UI, in one command.

``up`` starts, bound to 127.0.0.1: a Prefect server with API authentication on and a UI that reaches its own API,
a process work pool ``rotation`` and its worker, every deployment of ``prefect.yaml``, the automations, and the
example: a JWT keyset in a local store, the example auth service using it, and the deployment ``jwt-demo`` that
rotates it. The state file (mode 0600 in a 0700 folder) records the API's address, the generated auth string and
the processes started, each by its id and start time: ``down`` stops exactly those. While the server answers, the
``rotate`` commands send their runs to it (see :func:`cli.terminal.use_local_stack`).
"""

from __future__ import annotations

import contextlib
import getpass
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import httpx
import typer
from pydantic import BaseModel, ValidationError
from rich.markup import escape

from cli.example_service import ensure_keyset, start_service
from cli.output import clear_errors, console
from cli.servers import answered
from errors import BadInput
from targets.http import http_client

app = typer.Typer(no_args_is_help=True, help="The local stack: a Prefect server with its UI, a worker, the examples.")

ROOT = Path(__file__).resolve().parents[1]
POOL = "rotation"
EXAMPLE = "jwt-demo"


class Process(BaseModel):
    """A process the stack started: its id and its start time, so that a reused id is never signalled."""

    pid: int
    started: str

    def alive(self) -> bool:
        return _start_time(self.pid) == self.started


class StackState(BaseModel):
    """What ``up`` recorded: where the server is, how to authenticate to it, and what runs."""

    api_url: str
    ui_url: str
    auth_string: str
    example_store: str = ""
    example_service: str = ""
    processes: dict[str, Process] = {}


def state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "secret-rotation" / "stack"


def _state_file() -> Path:
    return state_dir() / "stack.json"


def read_state() -> StackState | None:
    """The recorded stack, or None when there is none (or its file is not one of ours)."""
    try:
        return StackState.model_validate_json(_state_file().read_text())
    except (OSError, ValidationError):
        return None


def answers(state: StackState) -> bool:
    """Whether the recorded server answers an authenticated call with the recorded auth string."""
    try:
        reply = http_client().get(f"{state.api_url}/admin/version", auth=_basic(state.auth_string), timeout=2)
    except httpx.HTTPError:
        return False
    return reply.status_code == 200


def running_server() -> StackState | None:
    """The local stack's server, when its state file exists and the server answers; else None."""
    state = read_state()
    return state if state is not None and answers(state) else None


def _basic(auth_string: str) -> httpx.BasicAuth:
    user, _, password = auth_string.partition(":")
    return httpx.BasicAuth(user, password)


def _write_state(state: StackState) -> None:
    path = _state_file()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(state.model_dump_json(indent=2))
    os.chmod(path, 0o600)


def _start_time(pid: int) -> str | None:
    try:
        # Field 22 of /proc/PID/stat, after the parenthesised command name (which may hold spaces).
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return None


def _prepare_state_dir() -> Path:
    folder = state_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        probe = folder / ".writable"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise BadInput(
            f"state folder {folder}: cannot write there ({exc.strerror}); set XDG_STATE_HOME to a folder you can "
            "write, or fix its permissions"
        ) from None
    return folder


def _check_port_free(port: int) -> None:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            raise BadInput(
                f"--port {port}: 127.0.0.1:{port} is already in use; stop what listens there, or pass a free --port"
            ) from None


def _spawn(name: str, argv: list[str], env: dict[str, str], folder: Path) -> Process:
    with (folder / f"{name}.log").open("ab") as log:
        # Its own session: `down` stops the process and its children (uvicorn, flow runs) as one group.
        child = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    for _ in range(50):
        started = _start_time(child.pid)
        if started is not None:
            return Process(pid=child.pid, started=started)
        time.sleep(0.01)
    raise BadInput(f"the {name} exited at once; see {folder / f'{name}.log'}")


def _wait_for_server(state: StackState, server: Process, log: Path, timeout: float = 120) -> None:
    if not answered(lambda: answers(state), server.alive, timeout, every=0.3):
        raise BadInput(f"the Prefect server did not start; see {log}")


def _stop(process: Process) -> None:
    if not process.alive():
        return
    os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while process.alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    if process.alive():
        os.killpg(process.pid, signal.SIGKILL)


def _stop_recorded() -> None:
    """Stop every process the state file records, newest first, and forget them."""
    state = read_state()
    if state is None:
        return
    for name in ("worker", "service", "server"):
        process = state.processes.get(name)
        if process is not None and process.alive():
            _stop(process)
            console.print(f"stopped the {name} (pid {process.pid})")
    _state_file().unlink(missing_ok=True)


def _environment(state: StackState, folder: Path) -> dict[str, str]:
    """The environment of the stack's processes: the server's settings and the matching client settings."""
    return {
        **os.environ,
        "PREFECT_HOME": str(folder / "prefect"),
        "PREFECT_API_URL": state.api_url,
        "PREFECT_UI_API_URL": state.api_url,
        "PREFECT_UI_URL": state.ui_url,
        "PREFECT_UI_ENABLED": "true",
        "PREFECT_SERVER_API_AUTH_STRING": state.auth_string,
        "PREFECT_API_AUTH_STRING": state.auth_string,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "ROTATE_PROJECT_DIR": str(ROOT),
    }


def _use(state: StackState) -> None:
    """Point this process's Prefect client at the stack."""
    from prefect.context import refresh_global_settings_context

    os.environ.update(PREFECT_API_URL=state.api_url, PREFECT_API_AUTH_STRING=state.auth_string)
    refresh_global_settings_context()


def _create_pool() -> None:
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client, contextlib.suppress(ObjectAlreadyExists):  # a stack started before
        client.create_work_pool(WorkPoolCreate(name=POOL, type="process"))


def _deploy_prefect_yaml(env: dict[str, str], folder: Path) -> None:
    prefect = [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"]
    with (folder / "deploy.log").open("ab") as log:
        done = subprocess.run(prefect, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=300)
    if done.returncode != 0:
        raise BadInput(f"`prefect deploy --all` failed; see {folder / 'deploy.log'}")


def _deploy_example(state: StackState) -> None:
    from flows.jwt import rotate_jwt_signing_key

    parameters = {
        "secret": state.example_store,
        "consumers": [
            {
                "name": "auth-service",
                "restart": {"kind": "http", "url": f"{state.example_service}/reload"},
                "verify_url": f"{state.example_service}/me",
            }
        ],
        "policy": {"token_lifetime_seconds": 10, "grace_seconds": 5},
        "options": {"started_by": getpass.getuser(), "approval_timeout_seconds": 3600},
    }
    rotate_jwt_signing_key.from_source(str(ROOT), "flows/jwt.py:rotate_jwt_signing_key").deploy(
        name=EXAMPLE,
        work_pool_name=POOL,
        parameters=parameters,
        description="The example: rotate the JWT key of the example auth service started by `rotate stack up`. "
        "Set options.started_by to your name; a second person approves the promotion in the Resume form.",
        build=False,
        print_next_steps=False,
    )


@app.command()
def up(
    port: Annotated[int, typer.Option(help="Port of the Prefect server and its UI, on 127.0.0.1")] = 4200,
    notify_url: Annotated[
        str | None, typer.Option(help="A URL that receives a JSON POST for each notification (approvals, failures)")
    ] = None,
) -> None:
    """Start the local stack: the Prefect server with its UI, a worker, every deployment, the automations."""
    with clear_errors():
        folder = _prepare_state_dir()
        running = running_server()
        if running is not None:
            console.print(f"the local stack is already running: UI {running.ui_url}")
            return
        _stop_recorded()  # what is left of a stack whose server stopped
        _check_port_free(port)
        base = f"http://127.0.0.1:{port}"
        state = StackState(api_url=f"{base}/api", ui_url=base, auth_string=f"rotate:{secrets.token_urlsafe(24)}")
        env = _environment(state, folder)
        _write_state(state)  # before anything starts: `down` can stop a stack that failed half-way
        state.processes["server"] = _spawn(
            "server",
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env,
            folder,
        )
        _write_state(state)
        _wait_for_server(state, state.processes["server"], folder / "server.log")
        console.print(f"Prefect server and UI at {base} (log: {folder / 'server.log'})")
        _use(state)
        _create_pool()
        _deploy_prefect_yaml(env, folder)
        console.print("deployed every deployment of prefect.yaml")

        example = folder / "example"
        example.mkdir(exist_ok=True, mode=0o700)
        state.example_store = f"local://{example / 'store.db'}?secret=auth-jwt"
        ensure_keyset(state.example_store, console)
        service, state.example_service = start_service(state.example_store, folder / "service.log", detach=True)
        state.processes["service"] = Process(pid=service.pid, started=_start_time(service.pid) or "")
        _write_state(state)
        _deploy_example(state)
        console.print(f"example auth service at {state.example_service}; deployment rotate-jwt-signing-key/{EXAMPLE}")

        from deployments.automations import install, webhook_block

        for name in install(webhook_block(notify_url) if notify_url else None):
            console.print(f"automation: {escape(name)}")

        state.processes["worker"] = _spawn(
            "worker", [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL], env, folder
        )
        _write_state(state)
        console.print(f"worker for work pool {POOL} (log: {folder / 'worker.log'})")
        console.print(
            f"\nOpen {base} and sign in with the auth string (`rotate stack status --show-auth-string` prints it; "
            f"it is kept in {_state_file()}). Run rotate-jwt-signing-key/{EXAMPLE}, then approve the paused run "
            "with its Resume form as someone other than options.started_by. Stop it all: rotate stack down"
        )


@app.command()
def down() -> None:
    """Stop the processes `rotate stack up` started (and only those)."""
    with clear_errors():
        if read_state() is None:
            console.print(f"the local stack is not running (no state file {_state_file()})")
            return
        _stop_recorded()


@app.command()
def status(
    show_auth_string: Annotated[
        bool, typer.Option("--show-auth-string", help="Print only the auth string, to paste into the UI's login")
    ] = False,
) -> None:
    """Say what the local stack runs, and where."""
    with clear_errors():
        state = read_state()
        if state is None:
            raise BadInput(f"the local stack is not running (no state file {_state_file()}); start it: rotate stack up")
        if show_auth_string:
            print(state.auth_string)
            return
        console.print(f"UI {state.ui_url}: {'answers' if answers(state) else 'does not answer'}")
        for name, process in state.processes.items():
            console.print(f"{name}: pid {process.pid} {'running' if process.alive() else 'stopped'}")
        console.print(f"example store: {escape(state.example_store)}; service: {state.example_service}")
        console.print(f"state: {_state_file()}")
