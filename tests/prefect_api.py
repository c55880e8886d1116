"""Prefect's REST API as a script or the UI calls it, asked again while the suite's busy server cannot answer (a 503
from its locked SQLite database, a timeout under load): tests judge the server's answers, not its load."""

from __future__ import annotations

import time
from typing import Any

import httpx

from targets.http import http_client


def call(method: str, url: str, timeout: float = 120, **kwargs: Any) -> Any:
    """The JSON of the first answer below 500; a 4xx is raised, as a script would see it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            answer = http_client().request(method, url, timeout=30, **kwargs)
            if answer.status_code < 500:
                return answer.raise_for_status().json()
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"{method} {url}: the Prefect server did not answer within {timeout} s"
        time.sleep(0.5)


def run_state(api: str, run_id: str) -> str:
    """The type of a flow run's state (PAUSED, RUNNING, ...)."""
    return call("GET", f"{api}/flow_runs/{run_id}")["state"]["type"]


def resume(api: str, run_id: str, run_input: dict[str, Any]) -> str:
    """POST a decision as the UI's Resume form does; the server's verdict (ACCEPT, REJECT, ABORT)."""
    return call("POST", f"{api}/flow_runs/{run_id}/resume", json={"run_input": run_input})["status"]
