"""What the auth service knows of SAML before it loads pysaml2 (:mod:`.saml`), which only a service configured as a
SAML service provider does: its settings and its errors. A JWT-only service starts without it, in about a third of
the CPU time."""

from __future__ import annotations

from dataclasses import dataclass

#: The bindings a sign-in may use (``/saml/login?binding=``).
BINDING_NAMES = ("redirect", "post")


class SamlUnusable(Exception):
    """The stored SAML key set, or the IdP's metadata, cannot be used; the message never holds key material."""


class SignInRefused(Exception):
    """An IdP answer this SP does not accept; the message never holds the assertion."""


@dataclass(frozen=True)
class SamlSettings:
    store_uri: str
    base_url: str  # how browsers and identity providers reach this service, e.g. http://127.0.0.1:8080
    idp_metadata_url: str
    cache_duration_seconds: int = 3600
    valid_hours: int = 24

    @property
    def entity_id(self) -> str:
        return f"{self.base_url}/saml/metadata"

    @property
    def acs_url(self) -> str:
        return f"{self.base_url}/saml/acs"
