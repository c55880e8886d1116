"""What a PostgreSQL secret holds, in AWS's shape, and how to log in with it without ever downgrading TLS.

The value is AWS Secrets Manager's JSON for PostgreSQL, so applications and AWS's tooling keep reading it::

    {"engine": "postgres", "host": "db-1", "port": 5432, "username": "app", "password": "...",
     "dbname": "orders", "masterarn": "aws://prod/db-admin?region=eu-west-1",
     "sslmode": "verify-full", "sslrootcert": "/etc/ssl/db-ca.pem"}

``masterarn`` names the administrator secret: by its store URI, or, for a secret in AWS Secrets Manager, by its ARN
as AWS's rotation functions require (found in the same store: same endpoint, the ARN's region). ``engine`` may be
``postgres``, ``postgresql`` or ``aurora-postgresql``. A staged value is the current JSON with only ``username`` and
``password`` replaced: every other field keeps its type (a ``"port": "5432"`` string stays a string) and every key
this project does not know stays as it was, so AWS's functions and the applications read it as before.

TLS: ``sslmode`` is passed to libpq as is; without it, AWS's ``ssl: false`` means ``disable`` and anything else
``verify-full``. ``allow`` and ``prefer`` are refused: they fall back to plain text silently, which this runbook
never does.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from errors import BadInput
from redaction import register_secret
from targets.passwords import PasswordPolicy
from targets.secret_json import parse_json_credential

SslMode = Literal["disable", "require", "verify-ca", "verify-full"]
ENGINES = ("postgres", "postgresql", "aurora-postgresql")


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
        if isinstance(data, dict) and data.get("engine") not in (None, *ENGINES):
            raise ValueError(f"engine is {data['engine']!r}, not one of {', '.join(ENGINES)}")
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


def with_login(current: str, username: str, password: str) -> str:
    """The credential ``current`` (JSON) with another user and password, every other field exactly as it was."""
    parse_credential(current, "the current PostgreSQL secret")
    data = json.loads(current)
    data.update(username=username, password=register_secret(password))
    return json.dumps(data)


def new_login_value(current: str, username: str, policy: PasswordPolicy | None = None) -> str:
    """The current credential with ``username`` and a new random password (given to ``Rotation.stage``)."""
    return with_login(current, username, (policy or PasswordPolicy()).new_password())
