"""The example auth service (``python -m examples.auth_service``) that the demo and the local stack start, and its
keyset."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from rich.console import Console

from cli.servers import answered, free_port, healthy
from stores import open_store
from stores.errors import SecretNotFound
from targets.jwt.keyset import JwtKeyset, new_key


def start_service(uri: str, log: Path, detach: bool = False) -> tuple[subprocess.Popen[bytes], str]:
    """Start the example auth service on a free port of 127.0.0.1, using the keyset at ``uri``; ``detach`` lets it
    outlive this command (the local stack)."""
    port = free_port()
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "examples.auth_service", "--store", uri, "--host", "127.0.0.1", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=detach,
        )
    base = f"http://127.0.0.1:{port}"
    if not answered(lambda: healthy(f"{base}/health", timeout=1), lambda: process.poll() is None, timeout=30):
        process.kill()
        raise RuntimeError(f"the example auth service did not start; see {log}")
    return process, base


def ensure_keyset(uri: str, console: Console) -> None:
    """A JWT keyset at ``uri``: the one there, or a new one."""
    store = open_store(uri)
    try:
        store.describe()
    except SecretNotFound:
        store.create(JwtKeyset(keys=[new_key("HS256", 512)]).to_secret())
        console.print(f"created a JWT keyset in [bold]{uri}[/bold]")
