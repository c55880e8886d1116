"""What an SMTP secret holds: the server, how TLS is used, and the login; and, for Amazon SES, the IAM user.

The value is JSON::

    {"host": "smtp.example.com", "port": 587, "tls": "starttls", "username": "app@example.com",
     "password": "...", "ca_file": "/etc/ssl/private-ca.pem"}

    {"host": "email-smtp.eu-west-1.amazonaws.com", "port": 587, "tls": "starttls",
     "username": "AKIA...", "password": "<derived from the secret access key>",
     "ses": {"iam_user": "mailer", "region": "eu-west-1"}}

``tls`` is ``starttls`` (plain connection upgraded before anything else is sent; port 587 by default) or
``implicit`` (TLS from the first byte; port 465 by default); without it, port 465 means implicit and any other port
STARTTLS. There is no plain-text mode: a login never leaves the machine without verified TLS. ``ca_file`` is a
PEM bundle of the CAs to trust (a private CA); without it the system's CAs are used.

With ``ses`` the password is derived from an access key of the IAM user ``ses.iam_user``, and ``username`` is
that access key's id (SES's convention), so the stored value names the key without holding the key's secret.
The region is ``ses.region``, or the one in an ``email-smtp.REGION.amazonaws.com`` host. Fields this module does
not know are kept as they are when a rotation writes the next value.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, model_validator

from errors import BadInput
from redaction import register_secret
from targets.secret_json import parse_json_credential
from targets.ses.password import REGION_PATTERN

TlsMode = Literal["starttls", "implicit"]
IMPLICIT_TLS_PORT = 465
SUBMISSION_PORT = 587
_SES_HOST = re.compile(r"^email-smtp(?:-fips)?\.(?P<region>[a-z]{2}(?:-[a-z]+)+-\d+)\.amazonaws\.com$")
_SHAPE = '"host", "port", "tls" ("starttls" or "implicit"), "username" and "password"'


class SmtpSecretInvalid(BadInput):
    """The secret's value is not an SMTP credential this runbook understands."""


class SesSettings(BaseModel):
    """Where an SES SMTP password comes from: an access key of this IAM user, for this region."""

    model_config = ConfigDict(extra="allow", frozen=True)

    iam_user: str = Field(min_length=1, max_length=64, pattern=r"^[\w+=,.@-]+$")
    region: str | None = Field(default=None, pattern=REGION_PATTERN)


class SmtpCredential(BaseModel):
    """The secret's value. ``password`` is a ``SecretStr``: no repr or error shows it."""

    model_config = ConfigDict(extra="allow", frozen=True)

    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    tls: TlsMode
    username: str = Field(min_length=1)
    password: SecretStr = Field(min_length=1)
    ca_file: str | None = None
    ses: SesSettings | None = None
    _document: dict[str, Any] = PrivateAttr(default_factory=dict)  # the stored JSON, as it was

    @model_validator(mode="before")
    @classmethod
    def _tls_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        if "tls" in data and (not data["tls"] or data["tls"] in ("none", "plain")):
            raise ValueError(
                f"tls is {data['tls']!r}: this runbook never sends a login without TLS; use starttls or implicit"
            )
        if "tls" not in data:
            data = {**data, "tls": "implicit" if data.get("port") == IMPLICIT_TLS_PORT else "starttls"}
        if "port" not in data:
            data = {**data, "port": IMPLICIT_TLS_PORT if data["tls"] == "implicit" else SUBMISSION_PORT}
        return data

    @model_validator(mode="after")
    def _ses_region(self) -> SmtpCredential:
        if self.ses is not None and self.ses_region is None:
            raise ValueError(
                "ses.region is missing and the host is not email-smtp.REGION.amazonaws.com; set ses.region to the "
                "region whose SMTP endpoint the consumers use"
            )
        if self.ses is not None and self.ses.region:
            match = _SES_HOST.match(self.host)
            if match and match["region"] != self.ses.region:
                raise ValueError(
                    f"ses.region is {self.ses.region} but the host is SES's endpoint in {match['region']}; an SES "
                    "SMTP password works in one region only: make them agree"
                )
        return self

    @property
    def secret(self) -> str:
        return self.password.get_secret_value()

    @property
    def address(self) -> str:
        """Where the login goes, for messages: ``smtps://host:465`` or ``smtp+starttls://host:587``."""
        scheme = "smtps" if self.tls == "implicit" else "smtp+starttls"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def ses_region(self) -> str | None:
        if self.ses is None:
            return None
        if self.ses.region:
            return self.ses.region
        match = _SES_HOST.match(self.host)
        return match["region"] if match else None

    def with_login(self, username: str, password: str) -> str:
        """This credential as JSON with another username and password: the next value of a rotation.

        Every other field is written back exactly as it was stored (defaults are not filled in)."""
        document = {**self._document, "username": username, "password": register_secret(password)}
        return json.dumps(document)


def parse_credential(text: str, where: str) -> SmtpCredential:
    """Parse a secret's value; errors name ``where`` and each field at fault, never the value."""
    credential = parse_json_credential(text, where, SmtpCredential, SmtpSecretInvalid, "an SMTP credential", _SHAPE)
    credential._document = json.loads(text)
    return credential


def with_new_password(current: str, new_password: str) -> str:
    """The current credential with the password a person set at the provider (the hand-set path's staged value).

    Refuses an empty password and the current one: staging either would verify nothing new.
    """
    credential = parse_credential(current, "the current SMTP secret")
    register_secret(new_password)
    if not new_password.strip():
        raise SmtpSecretInvalid("the new SMTP password is empty; set one at the provider and enter it")
    if new_password == credential.secret:
        raise SmtpSecretInvalid(
            "the new SMTP password is the current one; set a new password at the provider and enter that"
        )
    return credential.with_login(credential.username, new_password)
