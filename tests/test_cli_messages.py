"""Every message of the ``rotate`` command a person meets when something is off: one line naming the input and what
to do, exit status 1, no traceback, and no Prefect server started for it; ``rotate status`` as people read it;
names printed as they are; no temporary server left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from typer.testing import CliRunner

from cli.app import app
from rotation.journal import Journal, Lease, RotationState
from tests.fixtures.ports import free_port
from tests.fixtures.prefect import running_prefect_server
from tests.prefect_api import resume

ROTATE = str(Path(sys.executable).parent / "rotate")


def _rotate(tmp_path: Path, *args: str, **env: str) -> tuple[int, str]:
    """``rotate ARGS`` in its own process, with no Prefect server configured unless ``env`` names one."""
    environment = {
        **os.environ,
        "PREFECT_API_URL": "",
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "COLUMNS": "",
        **env,
    }
    done = subprocess.run(
        [ROTATE, *args], capture_output=True, text=True, timeout=240, env=environment, stdin=subprocess.DEVNULL
    )
    return done.returncode, done.stdout + done.stderr


def _one_line_error(code: int, output: str) -> str:
    assert code == 1, output
    assert output.startswith("error: ") and output.count("\n") == 1, output  # one line, not wrapped
    assert "Traceback" not in output and "temporary server" not in output, output  # no Prefect server started
    return output.strip()


def _rotation(journal: Journal, state: RotationState | None, secret: str = "local:///x/store.db?secret=s", **kw):
    """A rotation in the journal as a run leaves it; ``state`` None: its run is alive (a long lease)."""
    lease = Lease.new(str(uuid.uuid4()), str(uuid.uuid4()), seconds=600)
    record = journal.begin(
        secret=secret,
        runbook="jwt-signing-key",
        started_by=kw.get("started_by", "alice"),
        parameters={},
        consumers=[],
        versions={},
        lease=lease,
    )
    if state is not None:
        journal.end_run(lease, state, kw.get("reason", ""))
    return record, lease


def test_bad_files_and_names_are_one_line_before_prefect_starts(tmp_path, local_store_factory) -> None:
    store = local_store_factory()
    store.create('{"keys": []}')
    journal = Journal(tmp_path / "journal.db")
    missing = tmp_path / "missing.json"
    not_json = tmp_path / "consumers.json"
    not_json.write_text("{not json")
    unknown = str(uuid.uuid4())

    message = _one_line_error(*_rotate(tmp_path, "jwt", store.uri.display, "--consumers", str(missing)))
    assert f"--consumers {missing}: cannot read it (No such file or directory)" in message
    message = _one_line_error(*_rotate(tmp_path, "jwt", store.uri.display, "--consumers", str(not_json)))
    assert f"--consumers {not_json}: not a JSON list of consumers" in message and "README" in message

    for command in (["approve", unknown, "--approver", "bob", "--reason", "r"], ["status", unknown]):
        message = _one_line_error(*_rotate(tmp_path, *command, "--journal", str(journal.path)))
        assert f"no rotation {unknown} in the journal {journal.display}" in message and "rotate status" in message
    for command in (["resume", unknown], ["rollback", unknown]):
        message = _one_line_error(*_rotate(tmp_path, *command, "--journal", str(journal.path)))
        assert f"no rotation {unknown} in the journal" in message

    blocked = tmp_path / "a-file"
    blocked.write_text("")
    message = _one_line_error(*_rotate(tmp_path, "demo", "--yes", "--dir", str(blocked / "demo")))
    assert f"--dir {blocked / 'demo'}: cannot write there (Not a directory)" in message
    assert journal.list() == []


def test_finished_or_stopped_rotations_answer_resume_and_rollback_in_one_correct_line(tmp_path) -> None:
    journal = Journal(tmp_path / "journal.db")
    completed, _ = _rotation(journal, RotationState.COMPLETED)
    rolled_back, _ = _rotation(journal, RotationState.ROLLED_BACK)
    half_undone, _ = _rotation(journal, RotationState.ROLLBACK_FAILED, reason="undo of step 'x' failed")
    runner = CliRunner()

    def answer(*args: str) -> str:
        result = runner.invoke(app, [*args, "--journal", str(journal.path)])
        return _one_line_error(result.exit_code, result.output)

    assert answer("resume", completed.id).endswith("is already completed; start a new rotation instead")
    assert answer("rollback", completed.id).endswith("is already completed; there is nothing to undo")
    assert answer("resume", rolled_back.id).endswith("is already rolled-back; start a new rotation instead")
    assert answer("rollback", rolled_back.id).endswith("is already rolled-back; there is nothing to undo")
    message = answer("resume", half_undone.id)
    assert "stopped half-way through its rollback" in message and f"rotate rollback {half_undone.id}" in message
    message = answer("approve", completed.id, "--approver", "bob", "--reason", "r")
    assert message.endswith(f"rotation {completed.id} is not waiting for an approval (completed)")
    for blank in ("--approver", "--reason"):
        args = {"--approver": "bob", "--reason": "ok", blank: "  "}
        message = answer("approve", completed.id, *[x for kv in args.items() for x in kv])
        assert message.startswith(f"error: {blank} is blank: give ")


def test_approve_without_a_reachable_or_authorised_prefect_server(tmp_path) -> None:
    journal = Journal(tmp_path / "journal.db")
    record, lease = _rotation(journal, None)
    journal.record(record.id, "approve-promote", "waiting", flow_run=lease.flow_run_id, pause_key="k", question="q")
    approve = ["approve", record.id, "--approver", "bob", "--reason", "r", "--journal", str(journal.path)]

    message = _one_line_error(*_rotate(tmp_path, *approve))
    assert "PREFECT_API_URL is not set" in message and f"the run of rotation {record.id} waits on it" in message
    closed = f"http://127.0.0.1:{free_port()}/api"
    message = _one_line_error(*_rotate(tmp_path, *approve, PREFECT_API_URL=closed))
    assert f"no Prefect server answers at PREFECT_API_URL={closed}" in message

    saved = os.environ.get("PREFECT_SERVER_API_AUTH_STRING")
    os.environ["PREFECT_SERVER_API_AUTH_STRING"] = "admin:right-password"
    try:
        (tmp_path / "auth-server-home").mkdir()
        with running_prefect_server(tmp_path / "auth-server-home") as server:
            os.environ.pop("PREFECT_SERVER_API_AUTH_STRING")
            for given, says in (("admin:wrong", "does not match the server's"), ("", "is not set")):
                message = _one_line_error(
                    *_rotate(tmp_path, *approve, PREFECT_API_URL=server.api_url, PREFECT_API_AUTH_STRING=given)
                )
                assert f"the Prefect server at {server.api_url} refused this command" in message
                assert f"PREFECT_API_AUTH_STRING {says}" in message and "PREFECT_SERVER_API_AUTH_STRING" in message
    finally:
        os.environ.pop("PREFECT_SERVER_API_AUTH_STRING", None)
        if saved is not None:
            os.environ["PREFECT_SERVER_API_AUTH_STRING"] = saved
    assert [e.status for e in journal.events(record.id)][-1] == "waiting"  # nothing was decided


def test_status_names_the_journal_prints_names_as_they_are_and_does_not_wrap(tmp_path) -> None:
    journal = Journal(tmp_path / "journal.db")
    long_secret = "local:///srv/rotate/" + "very-long-folder-name/" * 6 + "store.db?secret=[red]auth[/red]-jwt"
    record, _ = _rotation(journal, RotationState.COMPLETED, secret=long_secret, started_by="[bold]eve[/")
    result = CliRunner().invoke(app, ["status", "--journal", str(journal.path)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"journal: {journal.display}\n")
    assert any(f"jwt-signing-key: {long_secret}" in line for line in result.output.splitlines())  # one line
    assert "[bold]eve[/" in result.output
    trail = CliRunner().invoke(app, ["status", record.id, "--journal", str(journal.path)])
    assert (
        trail.exit_code == 0 and f"rotation {record.id} of {long_secret} (jwt-signing-key): completed" in trail.output
    )


def test_a_waiting_rotation_with_markup_in_its_name(prefect_server, tmp_path) -> None:
    """A secret named like rich markup is rotated to the end, its question printed literally, and ``rotate status``
    says that it waits for approval, in which flow run."""
    from stores import open_store
    from targets.jwt.keyset import JwtKeyset, new_key

    store = open_store(f"local://{tmp_path / 'store.db'}?secret=[red]auth[/]")
    store.create(JwtKeyset(keys=[new_key("HS256", 512)]).to_secret())
    journal = Journal(tmp_path / "journal.db")
    seen: dict[str, str] = {}

    def approver() -> None:
        deadline = time.monotonic() + 120
        while not (active := journal.list(active_only=True)) or not any(
            e.status == "waiting" for e in journal.events(active[0].id)
        ):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        seen["status"] = _rotate(tmp_path, "status", "--journal", str(journal.path))[1]
        for _ in range(100):
            decision = {"decision": "approve", "approver": "bob", "reason": "ok"}
            decision.update(rotation_id=active[0].id, step="approve-promote")
            if resume(prefect_server.api_url, active[0].flow_run_id, decision) == "ACCEPT":
                return
            time.sleep(0.2)

    thread = threading.Thread(target=approver, daemon=True)
    thread.start()
    args = ["jwt", store.uri.display, "--grace", "0", "--token-lifetime", "0", "--journal", str(journal.path)]
    result = CliRunner().invoke(app, args)
    thread.join(30)
    assert result.exit_code == 0, result.output
    assert "waiting for approval approve-promote of [red]auth[/]: Promote JWT key" in result.output
    (record,) = journal.list()
    assert record.state == "completed"
    assert f"waiting for approval (approve-promote) in flow run {record.flow_run_id}" in seen["status"]


def _children(pid: int) -> set[int]:
    """The process's descendants now (none once it has ended)."""
    found: set[int] = set()
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                found |= {int(child), *_children(int(child))}
    except (FileNotFoundError, ProcessLookupError):
        pass  # it ended while we looked
    return found


def _is_prefect_server(cmdline: str) -> bool:
    argv = cmdline.split("\0")
    return argv[2:5] == ["prefect", "server", "start"]


def test_no_temporary_server_outlives_the_command(tmp_path) -> None:
    """``rotate`` without a Prefect server runs a temporary one; stopped with SIGTERM while it waits for an
    approval (a cron job's timeout, a closed session), it takes that server with it."""
    from stores import open_store
    from targets.jwt.keyset import JwtKeyset, new_key

    store = open_store(f"local://{tmp_path / 'store.db'}?secret=jwt")
    store.create(JwtKeyset(keys=[new_key("HS256", 512)]).to_secret())
    journal = Journal(tmp_path / "journal.db")
    environment = {**os.environ, "PREFECT_API_URL": "", "PREFECT_HOME": str(tmp_path / "prefect-home")}
    environment["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "180"  # a busy machine
    log = tmp_path / "rotate.log"
    with log.open("w") as out:
        command = subprocess.Popen(
            [ROTATE, "jwt", store.uri.display, "--journal", str(journal.path)],
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 240
        while "Pausing flow" not in log.read_text():
            assert command.poll() is None and time.monotonic() < deadline, "the rotation did not start waiting"
            time.sleep(0.5)
        time.sleep(1)  # the command prints how to approve as the run pauses
        servers = {
            pid for pid in _children(command.pid) if _is_prefect_server(Path(f"/proc/{pid}/cmdline").read_text())
        }
        assert servers, "no temporary server was started"
        command.send_signal(signal.SIGTERM)
        command.wait(timeout=60)
    finally:
        if command.poll() is None:
            command.kill()
    output = log.read_text()
    assert command.returncode == 128 + signal.SIGTERM, output
    assert "PREFECT_API_URL=http://127.0.0.1:" in output and "rotate approve" in output  # how to reach it meanwhile
    deadline = time.monotonic() + 20
    while any(Path(f"/proc/{pid}").exists() for pid in servers):
        assert time.monotonic() < deadline, f"temporary server {servers} still runs after the command ended"
        time.sleep(0.2)


def test_a_command_stopped_while_its_temporary_server_boots_takes_it_along(tmp_path) -> None:
    """SIGTERM in the first second, the server launched and still booting, the command still importing: the same."""
    from stores import open_store
    from targets.jwt.keyset import JwtKeyset, new_key

    store = open_store(f"local://{tmp_path / 'store.db'}?secret=jwt")  # the command would wait for an approval
    store.create(JwtKeyset(keys=[new_key("HS256", 512)]).to_secret())
    environment = {**os.environ, "PREFECT_API_URL": "", "PREFECT_HOME": str(tmp_path / "prefect-home")}
    command = subprocess.Popen(
        [ROTATE, "jwt", store.uri.display, "--journal", str(tmp_path / "j.db")],
        env=environment, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not (servers := {p for p in _children(command.pid) if _is_prefect_server(_cmdline(p))}):
            assert command.poll() is None and time.monotonic() < deadline, "no temporary server was launched"
            time.sleep(0.02)
        command.send_signal(signal.SIGTERM)
        assert command.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        if command.poll() is None:
            command.kill()
    deadline = time.monotonic() + 20
    while any(Path(f"/proc/{pid}").exists() for pid in servers):
        assert time.monotonic() < deadline, f"temporary server {servers} still runs after the command ended"
        time.sleep(0.2)


def test_a_temporary_server_that_cannot_start_says_why(tmp_path) -> None:
    """PREFECT_HOME unusable (here a file, where the server wants a folder for its database): the command says what
    the server said and where its home is, in one line, instead of the server's last words ("Server stopped!")."""
    from stores import open_store
    from targets.jwt.keyset import JwtKeyset, new_key

    store = open_store(f"local://{tmp_path / 'store.db'}?secret=jwt")
    store.create(JwtKeyset(keys=[new_key("HS256", 512)]).to_secret())
    home = tmp_path / "not-a-folder"
    home.write_text("")
    journal = str(tmp_path / "journal.db")
    code, output = _rotate(
        tmp_path, "jwt", store.uri.display, "--no-approval", "--journal", journal, PREFECT_HOME=str(home)
    )
    assert code == 1 and output.startswith("error: the temporary Prefect server stopped at once: "), output
    assert output.count("\n") == 1 and "Traceback" not in output, output
    assert "Server stopped!" not in output and f"PREFECT_HOME, {home}" in output, output


def test_a_server_named_by_the_profile_is_used_and_the_early_temporary_one_stopped(prefect_server, tmp_path) -> None:
    """The executable launches a temporary server before it reads Prefect's settings (cli/main.py); when the active
    profile names a server after all, the run goes there and the launched server is stopped at once."""
    from prefect import get_client

    from stores import open_store
    from targets.jwt.keyset import JwtKeyset, new_key

    store = open_store(f"local://{tmp_path / 'store.db'}?secret=jwt")
    store.create(JwtKeyset(keys=[new_key("HS256", 512)]).to_secret())
    profiles = tmp_path / "profiles.toml"
    profiles.write_text(f'active = "ops"\n\n[profiles.ops]\nPREFECT_API_URL = "{prefect_server.api_url}"\n')
    environment = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    environment |= {"PREFECT_PROFILES_PATH": str(profiles), "PREFECT_HOME": str(tmp_path / "prefect-home")}
    command = subprocess.Popen(
        [ROTATE, "jwt", store.uri.display, "--no-approval", "--token-lifetime", "0", "--grace", "0", "--journal",
         str(tmp_path / "j.db")],
        env=environment, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    launched: set[int] = set()
    beside_the_run: list[bool] = []  # at the run's first line: was a launched server still running?

    def read_output(lines: list[str]) -> None:
        for line in command.stdout:
            if "Beginning flow run" in line:
                beside_the_run.append(any(Path(f"/proc/{pid}").exists() for pid in launched))
            lines.append(line)

    printed: list[str] = []
    reader = threading.Thread(target=read_output, args=(printed,), daemon=True)
    reader.start()
    while command.poll() is None:
        launched |= {p for p in _children(command.pid) if _is_prefect_server(_cmdline(p))}
        time.sleep(0.05)
    reader.join(10)
    output = "".join(printed)
    assert command.returncode == 0, output
    assert launched, "the executable launched no temporary server before reading the profile"
    assert beside_the_run == [False], "the launched temporary server was not stopped before the run began"
    (record,) = Journal(tmp_path / "j.db").list()
    with get_client(sync_client=True) as client:  # the run is on the profile's server
        assert client.read_flow_run(uuid.UUID(record.flow_run_id)).state.is_completed()
    assert "temporary" not in output, output


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return ""
