"""Servers a command starts on this machine: a port for them, and waiting until they answer."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import httpx

from targets.http import http_client


def free_port() -> int:
    """A port of 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def healthy(url: str, timeout: float = 2) -> bool:
    """Whether ``url`` answers with a success now."""
    try:
        return http_client().get(url, timeout=timeout).is_success
    except httpx.HTTPError:
        return False


def answered(ready: Callable[[], bool], alive: Callable[[], bool], timeout: float, every: float = 0.2) -> bool:
    """Whether ``ready()`` came true within ``timeout`` seconds; False as soon as ``alive()`` no longer holds (the
    server's process stopped), or when the time is up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return True
        if not alive():
            return False
        time.sleep(every)
    return False
