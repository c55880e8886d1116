"""A SAML sign-in as a browser makes it: from the SP's login URL to its identity provider and back to its ACS.

The SP answers its login URL with a signed AuthnRequest (a redirect carrying ``SAMLRequest``, ``SigAlg`` and
``Signature``, or an auto-submitting form for the POST binding); the browser takes it to the IdP, which verifies
the signature with the SP's metadata and answers with a form carrying a ``SAMLResponse`` (the assertion
encrypted to the SP); the browser posts that to the SP's assertion consumer service. The IdP must sign the test
user in without a person (a test IdP, or a probe account): this check has no password to type.

A redirect or form that carries a SAML message is followed; the sign-in succeeded when the SP's ACS answers 2xx.
With the redirect binding the signature is in the URL, so :func:`sign_in` also tells which of the certificates
given verifies it: which key the SP signs with.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from html.parser import HTMLParser
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pydantic import BaseModel

from errors import CheckFailed, Unreachable
from targets.http import tls_context
from targets.saml.certificates import fingerprint

_MAX_HOPS = 12
_DSIG_MORE = "http://www.w3.org/2001/04/xmldsig-more#"
SIGNATURE_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "http://www.w3.org/2000/09/xmldsig#rsa-sha1": hashes.SHA1,
    f"{_DSIG_MORE}rsa-sha256": hashes.SHA256,
    f"{_DSIG_MORE}rsa-sha384": hashes.SHA384,
    f"{_DSIG_MORE}rsa-sha512": hashes.SHA512,
    f"{_DSIG_MORE}ecdsa-sha256": hashes.SHA256,
    f"{_DSIG_MORE}ecdsa-sha384": hashes.SHA384,
    f"{_DSIG_MORE}ecdsa-sha512": hashes.SHA512,
}


class SignInFailed(CheckFailed):
    """The IdP refused the SP's request, or the SP refused the IdP's answer."""


class SignIn(BaseModel):
    """What a sign-in showed: where the request went, which binding carried it, what the SP answered."""

    login_url: str
    request_binding: str
    identity_provider: str
    assertion_consumer: str
    signed_with: str | None = None  # the fingerprint of the certificate that verifies a redirect's signature
    answer: dict[str, Any] | None = None


class ServiceProvider(BaseModel):
    """Where a SAML service provider is reached: its metadata, and the URLs where a browser starts a sign-in."""

    name: str
    metadata_url: str
    login_urls: list[str] = []


def _verifies(certificate: x509.Certificate, signature: bytes, signed: bytes, algorithm: str) -> bool:
    digest = SIGNATURE_HASHES[algorithm]()
    public = certificate.public_key()
    try:
        if isinstance(public, rsa.RSAPublicKey) and "#rsa-" in algorithm:
            public.verify(signature, signed, padding.PKCS1v15(), digest)
        elif isinstance(public, ec.EllipticCurvePublicKey) and "#ecdsa-" in algorithm:
            # XML signatures carry ECDSA as r || s, not DER.
            half = len(signature) // 2
            r, s = int.from_bytes(signature[:half], "big"), int.from_bytes(signature[half:], "big")
            public.verify(encode_dss_signature(r, s), signed, ec.ECDSA(digest))
        else:
            return False
    except InvalidSignature:
        return False
    return True


def redirect_signer(url: str, certificates: Sequence[x509.Certificate]) -> str | None:
    """The fingerprint of the certificate among ``certificates`` whose key signed a redirect-binding request
    (SAML bindings 3.4.4.1: the signature covers ``SAMLRequest=..&RelayState=..&SigAlg=..`` as sent)."""
    raw = dict(part.partition("=")[::2] for part in urlsplit(url).query.split("&") if part)
    algorithm = unquote(raw.get("SigAlg", ""))
    if "SAMLRequest" not in raw or "Signature" not in raw or algorithm not in SIGNATURE_HASHES:
        return None
    signed = "&".join(f"{name}={raw[name]}" for name in ("SAMLRequest", "RelayState", "SigAlg") if name in raw)
    try:
        signature = base64.b64decode(unquote(raw["Signature"]), validate=True)
    except binascii.Error:
        return None
    for certificate in certificates:
        if _verifies(certificate, signature, signed.encode(), algorithm):
            return fingerprint(certificate)
    return None


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


def sign_in(
    login_url: str, certificates: Sequence[x509.Certificate] = (), timeout: float = 10, verify_tls: bool = True
) -> SignIn:
    """Sign in through the SP at ``login_url``; :class:`SignInFailed` names who refused what. ``certificates``:
    the SP's certificates, to tell which one verifies a redirect's signature."""
    binding = idp = acs = signed_with = None
    try:
        with httpx.Client(timeout=timeout, verify=tls_context(verify_tls)) as browser:  # its own cookies
            response = browser.get(login_url)
            for _ in range(_MAX_HOPS):
                form = _form(response)
                if response.is_redirect:
                    target = urljoin(str(response.url), response.headers["location"])
                    if binding is None and "SAMLRequest=" in target:
                        binding, idp = "redirect", _where(target)
                        signed_with = redirect_signer(target, certificates)
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
        signed_with=signed_with,
        answer=answer if isinstance(answer, dict) else None,
    )
