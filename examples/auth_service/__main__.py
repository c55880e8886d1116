"""``python -m examples.auth_service --store URI --host 127.0.0.1 --port N``: serve until SIGTERM or Ctrl-C.

With ``--saml-store URI --saml-idp-metadata URL`` it is also a SAML service provider: metadata at /saml/metadata,
sign-in at /saml/login (``?binding=redirect`` or ``post``), assertions at /saml/acs.
SIGHUP re-reads the keys from the stores, as ``POST /reload`` does.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from types import FrameType

from examples.auth_service.saml_settings import SamlSettings
from examples.auth_service.service import AuthHTTPServer, AuthService, KeysetUnusable, log


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m examples.auth_service", description=__doc__)
    parser.add_argument("--store", required=True, help="store URI of the JWT keyset, e.g. local:///path/db?secret=jwt")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--token-lifetime", type=float, default=900, help="seconds until an issued token expires")
    saml = parser.add_argument_group("SAML service provider (optional)")
    saml.add_argument("--saml-store", help="store URI of the SAML key set, e.g. local:///path/db?secret=saml")
    saml.add_argument("--saml-idp-metadata", help="URL of the identity provider's metadata")
    saml.add_argument("--saml-base-url", help="URL browsers reach this service at (default http://HOST:PORT)")
    saml.add_argument("--saml-cache-seconds", type=int, default=3600, help="the metadata's cacheDuration")
    saml.add_argument("--saml-valid-hours", type=int, default=24, help="the metadata's validUntil, from each request")
    args = parser.parse_args(argv)
    if bool(args.saml_store) != bool(args.saml_idp_metadata):
        parser.error("--saml-store and --saml-idp-metadata go together")
    return args


def _saml_settings(args: argparse.Namespace) -> SamlSettings | None:
    if not args.saml_store:
        return None
    return SamlSettings(
        store_uri=args.saml_store,
        base_url=(args.saml_base_url or f"http://{args.host}:{args.port}").rstrip("/"),
        idp_metadata_url=args.saml_idp_metadata,
        cache_duration_seconds=args.saml_cache_seconds,
        valid_hours=args.saml_valid_hours,
    )


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("saml2").setLevel(logging.WARNING)  # its INFO lines quote whole assertions
    try:
        app = AuthService(args.store, args.token_lifetime, _saml_settings(args))
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
        server.serve_forever(poll_interval=0.05)  # shutdown() waits for the next poll: stop at once when asked
    finally:
        server.server_close()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
