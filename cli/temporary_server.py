"""The temporary Prefect server of a ``rotate`` command that runs a flow here with no server to use.

Left to itself, Prefect starts its temporary server at the command's first API call: it first imports its whole
server application into the command (seconds), then starts the server in a subprocess that imports it again and
migrates the database (seconds more), one after the other. Started here instead, at the very beginning of the
command, the server boots in its own process while the command imports the runbook, checks its input and starts
what it needs, and the command never imports the server. It is the same server (``prefect server start``: the API
only, no UI, no background services, the database in ``PREFECT_HOME``), bound to 127.0.0.1, and it stops when the
command ends.

The ``rotate`` executable (:mod:`cli.main`) launches it before importing the command line (Prefect's settings
among it, about a second), when the command runs a flow here, PREFECT_API_URL is not in the environment and no local
stack is recorded; once the settings are read, :func:`cli.terminal.use_local_stack` adopts it with :func:`start`, or
stops it when a profile names a server after all.
"""

from __future__ import annotations

import atexit
import os
import re
import subprocess
import sys
import tempfile
from typing import IO

from cli.servers import answered, free_port, healthy
from errors import Unreachable

#: At least this long, or Prefect's own limit for its temporary server when that is longer
#: (PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, 20 s by default): a first start on a new PREFECT_HOME migrates
#: the database, on cores shared with the command itself.
MIN_STARTUP_TIMEOUT_SECONDS = 90

#: The commands that run a flow in this process: without a server to use, each starts its temporary one at once.
RUNS_FLOWS_HERE = frozenset(
    {"demo", "jwt", "postgres", "redis", "saml", "smtp", "resume", "rollback", "backup", "drill", "restore", "posture"}
)

_server: subprocess.Popen[bytes] | None = None
_log: IO[bytes] | None = None
_port: int | None = None
_api_url: str | None = None
_up = False


def launch() -> None:
    """Start the server's process, without pointing this process at it yet (:func:`start` does)."""
    global _server, _log, _port
    if _server is not None:
        return
    _port = free_port()
    _log = tempfile.TemporaryFile()  # noqa: SIM115 - open while the server runs: its last line explains a failure
    _server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(_port),
         "--no-ui", "--no-services"],
        stdout=_log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        env={**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"},
    )  # fmt: skip
    atexit.register(stop)


def start() -> None:
    """Start the server (or take the one :func:`launch` started) and point this process's Prefect client at it;
    :func:`wait` before the first API call."""
    global _api_url
    launch()
    if _api_url is not None:
        return
    from prefect.context import refresh_global_settings_context  # after the start: the server boots meanwhile

    _api_url = f"http://127.0.0.1:{_port}/api"
    os.environ["PREFECT_API_URL"] = _api_url
    refresh_global_settings_context()  # every thread (approvals are answered from one) reads the global settings


def wait() -> None:
    """Return once the server answers (at once if this command uses none)."""
    global _up
    if _server is None or _api_url is None or _up:
        return
    from prefect.settings import PREFECT_HOME, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

    limit = max(MIN_STARTUP_TIMEOUT_SECONDS, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value())
    server = _server
    if answered(lambda: healthy(f"{_api_url}/health"), lambda: server.poll() is None, limit, every=0.1):
        _up = True
        return
    if server.poll() is not None:
        raise Unreachable(
            f"the temporary Prefect server stopped at once: {_reason()} (its database is in PREFECT_HOME, "
            f"{PREFECT_HOME.value()}: make it writable or point PREFECT_HOME elsewhere)"
        )
    raise Unreachable(
        f"the temporary Prefect server did not answer within {limit} s ({_reason()}): start "
        "one with `rotate stack up` or `prefect server start`, and set PREFECT_API_URL to it"
    )


def api_url() -> str | None:
    """Where this command's temporary server answers, for another process (None: this command started none)."""
    return _api_url


def stop() -> None:
    global _server, _log
    if _server is None:
        return
    _server.terminate()
    try:
        _server.wait(10)
    except subprocess.TimeoutExpired:
        _server.kill()
        _server.wait()
    _server = None
    if _log is not None:
        _log.close()
        _log = None


def _reason() -> str:
    """The server's own words for its failure: the last exception it printed (its last line is "Server stopped!"),
    or its last line."""
    if _log is None:
        return "no output"
    _log.seek(0)
    lines = [line.strip() for line in _log.read().decode(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if _EXCEPTION.match(line)]
    return (errors or lines or ["no output"])[-1]


_EXCEPTION = re.compile(r"[\w.]+(Error|Exception)\b")
