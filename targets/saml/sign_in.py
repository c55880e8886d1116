"""A SAML sign-in as a browser makes it: from the SP's login URL to its identity provider and back to its ACS.

The SP answers its login URL with a signed AuthnRequest (a redirect carrying ``SAMLRequest``, ``SigAlg`` and
``Signature``, or an auto-submitting form for the POST binding); the browser takes it to the IdP, which verifies
the signature with the SP's metadata and answers with a form carrying a ``SAMLResponse`` (the assertion
encrypted to the SP); the browser posts that to the SP's assertion consumer service. The IdP must sign the test
user in without a person (a test IdP, or a probe account): this check has no password to type.

A redirect or form that carries a SAML message is followed; the sign-in succeeded when the SP's ACS answers 2xx.
"""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
from pydantic import BaseModel

from errors import CheckFailed, Unreachable

_MAX_HOPS = 12


class SignInFailed(CheckFailed):
    """The IdP refused the SP's request, or the SP refused the IdP's answer."""


class SignIn(BaseModel):
    """What a sign-in showed: where the request went, which binding carried it, what the SP answered."""

    login_url: str
    request_binding: str
    identity_provider: str
    assertion_consumer: str
    answer: dict[str, Any] | None = None


class _Form(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.fields: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "form" and self.action is None:
            self.action = values.get("action", "")
        elif tag == "input" and values.get("name"):
            self.fields[values["name"]] = values.get("value", "")


def _form(response: httpx.Response) -> _Form | None:
    if "html" not in response.headers.get("content-type", ""):
        return None
    parser = _Form()
    parser.feed(response.text)
    return parser if parser.action is not None and ({"SAMLRequest", "SAMLResponse"} & set(parser.fields)) else None


def _where(url: str | httpx.URL) -> str:
    parts = urlsplit(str(url))
    return f"{parts.scheme}://{parts.netloc}{parts.path}"  # the query carries the SAML message: not shown


def _refusal(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    error = body.get("error") if isinstance(body, dict) else None
    return f"HTTP {response.status_code}: {error}" if isinstance(error, str) else f"HTTP {response.status_code}"


def sign_in(login_url: str, timeout: float = 10, verify_tls: bool = True) -> SignIn:
    """Sign in through the SP at ``login_url``; :class:`SignInFailed` names who refused what."""
    binding = idp = acs = None
    try:
        with httpx.Client(timeout=timeout, verify=verify_tls) as browser:
            response = browser.get(login_url)
            for _ in range(_MAX_HOPS):
                form = _form(response)
                if response.is_redirect:
                    target = urljoin(str(response.url), response.headers["location"])
                    if binding is None and "SAMLRequest=" in target:
                        binding, idp = "redirect", _where(target)
                    response = browser.get(target)
                elif form is not None:
                    target = urljoin(str(response.url), form.action or "")
                    if "SAMLRequest" in form.fields:
                        binding, idp = binding or "post", _where(target)
                    else:
                        acs = _where(target)
                    response = browser.post(target, data=form.fields)
                else:
                    break
    except httpx.HTTPError as exc:
        raise Unreachable(f"sign-in through {_where(login_url)}: {type(exc).__name__}") from None
    if idp is None:
        raise SignInFailed(f"the SP at {_where(login_url)} answered {_refusal(response)} without an AuthnRequest")
    if acs is None:
        raise SignInFailed(
            f"the identity provider at {idp} did not accept the SP's signed AuthnRequest ({_refusal(response)}): "
            "it does not trust the SP's signing certificate, or the signature does not verify"
        )
    if not response.is_success:
        raise SignInFailed(f"the assertion consumer service at {acs} refused the IdP's answer ({_refusal(response)})")
    try:
        answer = response.json()
    except ValueError:
        answer = None
    return SignIn(
        login_url=_where(login_url),
        request_binding=binding or "redirect",
        identity_provider=idp,
        assertion_consumer=acs,
        answer=answer if isinstance(answer, dict) else None,
    )
