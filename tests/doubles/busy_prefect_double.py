"""A busy Prefect server: the real one behind it, except that a resume is answered 503 a given number of times, as
Prefect's server answers a request whose SQLite transaction met "database is locked" (its retryable database
errors) while other runs write."""

from __future__ import annotations

from typing import Any

from targets.http import http_client
from tests.doubles import HttpDouble

_BUSY = {"exception_message": "Service Unavailable"}  # Prefect's body for a retryable database error


class BusyPrefectDouble(HttpDouble):
    """Forwards to the Prefect API at ``api_url``; answers 503 to the first ``busy_resumes`` resume requests."""

    def __init__(self, api_url: str, busy_resumes: int) -> None:
        super().__init__()
        self.upstream = api_url.removesuffix("/")
        self.busy_left = busy_resumes
        self.refused = self.forwarded_resumes = 0

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    def respond(
        self, method: str, path: str, query: dict[str, str], body: Any, headers: Any
    ) -> tuple[int, Any, dict[str, str]]:
        resume = method == "POST" and path.endswith("/resume")
        if resume and self.busy_left > 0:
            self.busy_left -= 1
            self.refused += 1
            return 503, _BUSY, {}
        self.forwarded_resumes += resume
        reply = http_client().request(
            method, self.upstream + path.removeprefix("/api"), params=query, json=body, timeout=30
        )
        return reply.status_code, reply.json() if reply.content else None, {}
