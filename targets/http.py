"""The HTTP client and TLS contexts of this process.

Loading the CA bundle costs about 20 ms of CPU on these machines, and a rotation makes many calls (consumer reloads,
token checks, metadata reads, sign-ins): the bundle is loaded once per TLS setting, and calls that need no state of
their own share one client and its connections.
"""

from __future__ import annotations

import ssl
import threading
from functools import cache
from http.cookiejar import CookieJar, DefaultCookiePolicy

import httpx

_clients: dict[bool, httpx.Client] = {}
_clients_lock = threading.Lock()


@cache
def tls_context(verify_tls: bool = True) -> ssl.SSLContext:
    """The context httpx would build for ``verify=verify_tls``, built once: for a client that must be its own (a
    sign-in keeps its cookies), ``httpx.Client(verify=tls_context())``."""
    return httpx.create_ssl_context(verify=verify_tls)


def http_client(verify_tls: bool = True) -> httpx.Client:
    """The one shared HTTP client of this process, per TLS setting; it keeps no cookies."""
    with _clients_lock:
        client = _clients.get(verify_tls)
        if client is None:
            # No cookie jar: a cookie one consumer sets must not authenticate a later check, of it or of another
            # service on the same host (cookies ignore ports).
            no_cookies = CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
            client = _clients[verify_tls] = httpx.Client(verify=tls_context(verify_tls), cookies=no_cookies)
        return client
