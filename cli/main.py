"""The ``rotate`` executable: a command that will run a flow here launches its temporary Prefect server first.

Importing the command line takes about a second (Prefect's settings and client among it), and the temporary server
takes a few more to boot: launched before that import, the server boots meanwhile. Launched only when the command
runs a flow here, PREFECT_API_URL is not in the environment and no local stack is recorded; the command line then
adopts it, or stops it when a profile names a server after all (:func:`cli.terminal.use_local_stack`).

From its first moment, SIGTERM and SIGHUP (a cron job's timeout, a closed session) end the command as Ctrl-C does:
its exit handlers run, and stop that server with it.
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType


def _end(signum: int, _: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def _runs_a_flow_here(args: list[str]) -> bool:
    from cli.temporary_server import RUNS_FLOWS_HERE

    command = next((a for a in args if not a.startswith("-")), None)
    return command in RUNS_FLOWS_HERE and not {"--help", "-h"} & set(args)


def main() -> None:
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _end)
    if not os.environ.get("PREFECT_API_URL") and _runs_a_flow_here(sys.argv[1:]):
        from cli import stack, temporary_server

        if stack.read_state() is None:
            temporary_server.launch()
    from cli.app import app

    app()
