"""What a PostgreSQL secret holds, in AWS's shape, and how to log in with it without ever downgrading TLS.

The value is AWS Secrets Manager's JSON for PostgreSQL, so applications and AWS's tooling keep reading it::

    {"engine": "postgres", "host": "db-1", "port": 5432, "username": "app", "password": "...",
     "dbname": "orders", "masterarn": "aws://prod/db-admin?region=eu-west-1",
     "sslmode": "verify-full", "sslrootcert": "/etc/ssl/db-ca.pem"}

``masterarn`` names the administrator secret by its store URI. TLS: ``sslmode`` is passed to libpq as is; without
it, AWS's ``ssl: false`` means ``disable`` and anything else ``verify-full``. ``allow`` and ``prefer`` are refused:
they fall back to plain text silently, which this runbook never does.
"""

from __future__ import annotations

import json
import secrets
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from errors import BadInput
from redaction import register_secret
from targets.secret_json import parse_json_credential

SslMode = Literal["disable", "require", "verify-ca", "verify-full"]


class PgSecretInvalid(BadInput, ValueError):
    """The secret's value is not a PostgreSQL credential this runbook understands."""


class PgCredential(BaseModel):
    """The secret's value. ``password`` is a ``SecretStr``: no repr or error shows it."""

    model_config = ConfigDict(extra="allow", frozen=True)

    engine: str = "postgres"
    host: str = Field(min_length=1)
    port: int = Field(default=5432, ge=1, le=65535)
    username: str = Field(min_length=1, max_length=63)
    password: SecretStr
    dbname: str = Field(default="postgres", min_length=1)
    masterarn: str | None = None
    ssl: bool | None = None
    sslmode: SslMode | None = None
    sslrootcert: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_silent_fallback(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("sslmode") in ("allow", "prefer"):
            raise ValueError(
                f"sslmode {data['sslmode']!r} falls back to plain text silently; use require, verify-ca or "
                "verify-full (or disable, explicitly, for a server without TLS)"
            )
        if isinstance(data, dict) and data.get("engine") not in (None, "postgres", "postgresql"):
            raise ValueError(f"engine is {data['engine']!r}, not postgres")
        return data

    @property
    def secret(self) -> str:
        return self.password.get_secret_value()

    @property
    def effective_sslmode(self) -> SslMode:
        if self.sslmode:
            return self.sslmode
        return "disable" if self.ssl is False else "verify-full"

    def connect_kwargs(self, username: str, password: str, dbname: str | None = None) -> dict[str, Any]:
        """libpq parameters for a login as ``username`` on this credential's server, with its TLS settings."""
        kwargs: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "user": username,
            "password": password,
            "dbname": dbname or self.dbname,
            "sslmode": self.effective_sslmode,
            "connect_timeout": 5,
            "application_name": "secret-rotation",
        }
        if self.sslrootcert:
            kwargs["sslrootcert"] = self.sslrootcert
        return kwargs

    def with_login(self, username: str, password: str) -> str:
        """This credential as JSON with another user and password (the staged value of a rotation)."""
        data = self.model_dump(mode="json", exclude_none=True)
        data.update(username=username, password=register_secret(password))
        return json.dumps(data)


def parse_credential(text: str, where: str) -> PgCredential:
    """Parse a secret's value; errors name ``where`` and the fields at fault, never the value."""
    return parse_json_credential(
        text,
        where,
        PgCredential,
        PgSecretInvalid,
        "a PostgreSQL credential",
        '"engine", "host", "port", "username", "password" and "dbname"',
    )


def new_login_value(current: str, username: str, length_bytes: int = 32) -> str:
    """The current credential with ``username`` and a new random password (given to ``Rotation.stage``)."""
    credential = parse_credential(current, "the current PostgreSQL secret")
    return credential.with_login(username, secrets.token_urlsafe(length_bytes))
