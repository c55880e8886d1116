"""``python -m examples.auth_service --store URI --host 127.0.0.1 --port N``: serve until SIGTERM or Ctrl-C.

SIGHUP re-reads the keyset from the store, as ``POST /reload`` does.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from types import FrameType

from examples.auth_service.service import AuthHTTPServer, AuthService, KeysetUnusable, log


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m examples.auth_service", description=__doc__)
    parser.add_argument("--store", required=True, help="store URI of the JWT keyset, e.g. local:///path/db?secret=jwt")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--token-lifetime", type=float, default=900, help="seconds until an issued token expires")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        app = AuthService(args.store, args.token_lifetime)
    except KeysetUnusable as exc:
        log.error("%s", exc)
        return 2
    server = AuthHTTPServer((args.host, args.port), app)

    # Handlers only start threads: a reload or shutdown must not run inside a signal handler that interrupted
    # serve_forever (shutdown() would wait for it forever, and a second SIGHUP would re-enter the reload).
    def on_hup(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=app.reload_quietly, name="sighup-reload", daemon=True).start()

    def on_term(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=server.shutdown, name="shutdown", daemon=True).start()

    signal.signal(signal.SIGHUP, on_hup)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    keyset = app.keyset
    log.info(
        "listening on http://%s:%d with kids %s (signing %s)",
        args.host,
        server.server_port,
        ", ".join(keyset.keys),
        keyset.signing_kid,
    )
    try:
        server.serve_forever()
    finally:
        server.server_close()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
