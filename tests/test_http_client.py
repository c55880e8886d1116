"""The process's shared HTTP client (targets/http.py) carries nothing from one call to the next."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from targets.http import http_client


class _SetsACookie(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = (self.headers.get("Cookie") or "none").encode()
        self.send_response(200)
        self.send_header("Set-Cookie", "session=from-the-first-call; Path=/")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


@pytest.fixture
def cookie_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SetsACookie)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_cookie_one_call_receives_is_not_sent_with_the_next(cookie_server: str) -> None:
    """A consumer's session cookie from a reload must not authenticate the token check that follows it."""
    first = http_client().get(f"{cookie_server}/reload", timeout=5)
    assert first.headers["set-cookie"].startswith("session=")
    assert http_client().get(f"{cookie_server}/me", timeout=5).text == "none"
