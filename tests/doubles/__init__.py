"""Protocol doubles: small HTTP servers that answer the calls an SDK makes as the documented API does.

They stand in for servers that cannot be installed on a test machine (Vault, the Kubernetes API). Each double
listens on 127.0.0.1 on a free port, in a daemon thread, and is stopped by the fixture that started it.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


class JsonHandler(BaseHTTPRequestHandler):
    """Parses the request line and JSON body, and dispatches every method to ``route``."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: with Nagle, each answer waited ~40 ms
    server: DoubleServer

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: request lines would only clutter test output."""

    def _dispatch(self) -> None:
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            self.reply(400, self.server.double.malformed_body())
            return
        with self.server.double.lock:
            status, payload, headers = self.server.double.respond(self.command, parts.path, query, body, self.headers)
        self.reply(status, payload, headers)

    def reply(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        if payload is not None:
            self.send_header("Content-Type", "application/json")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_LIST = _dispatch


class DoubleServer(ThreadingHTTPServer):
    daemon_threads = True
    double: HttpDouble


class HttpDouble:
    """Base of the doubles: owns the server thread; subclasses implement ``route`` under ``self.lock``."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._server: DoubleServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the double first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HttpDouble:
        self._server = DoubleServer(("127.0.0.1", 0), JsonHandler)
        self._server.double = self
        self._thread = threading.Thread(target=self._server.serve_forever, name=type(self).__name__, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            assert self._thread is not None
            self._thread.join(timeout=5)
            self._server = None

    def malformed_body(self) -> Any:
        return {"errors": ["failed to parse JSON input"]}

    def respond(
        self, method: str, path: str, query: dict[str, str], body: Any, headers: Any
    ) -> tuple[int, Any, dict[str, str]]:
        """Status, JSON body and extra response headers; most doubles need no headers and implement ``route``."""
        return (*self.route(method, path, query, body, headers), {})

    def route(self, method: str, path: str, query: dict[str, str], body: Any, headers: Any) -> tuple[int, Any]:
        raise NotImplementedError
