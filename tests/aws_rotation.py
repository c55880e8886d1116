"""AWS's PostgreSQL rotation scheme, written here from its documented behaviour: the neighbour this runbook must
interoperate with, and the baseline the benchmark compares it to.

The four steps of one rotation, all keyed by one ClientRequestToken (the new version's id), each checking first
whether its work is done:

- create: stage the CURRENT JSON with a new password as AWSPENDING; multi-user: with the other user name
  (``app`` <-> ``app_clone``);
- set: single user: log in with the pending, then the current, then the previous credential and change the user's
  password; multi-user: log in as the administrator from ``masterarn`` (an ARN) and change the other user's password,
  creating it first as a login that is a member of the current user;
- test: log in with the pending credential and run ``SELECT NOW()``;
- finish: move AWSCURRENT to the new version (AWSPREVIOUS follows the old current); AWSPENDING stays on it, as the
  managed rotation leaves it before Secrets Manager removes the label.

One deliberate difference: the password reaches PostgreSQL as a SCRAM verifier, not in plain text, so that the
tests' server log (which records every statement) holds no password.
"""

from __future__ import annotations

import json
import secrets
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import boto3
import psycopg2
import psycopg2.extensions
from botocore.exceptions import ClientError
from psycopg2 import sql

from tests.fixtures.postgres import PgCluster

_EXCLUDE = "/@\"'\\"  # the characters AWS's rotation functions exclude from a PostgreSQL password


class AwsStyleRotation:
    """One secret rotated as AWS's single-user or multi-user function does; ``client`` is a boto3 Secrets Manager
    client (moto_server here)."""

    def __init__(self, client: Any, secret_id: str, multi_user: bool) -> None:
        self.client, self.secret_id, self.multi_user = client, secret_id, multi_user

    def rotate(self, token: str | None = None) -> str:
        token = token or str(uuid.uuid4())
        self.create(token)
        self.set(token)
        self.test(token)
        self.finish(token)
        return token

    def _value(self, **which: str) -> dict[str, Any]:
        return json.loads(self.client.get_secret_value(SecretId=self.secret_id, **which)["SecretString"])

    def create(self, token: str) -> None:
        current = self._value(VersionStage="AWSCURRENT")
        try:
            self._value(VersionId=token, VersionStage="AWSPENDING")
            return
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ResourceNotFoundException":
                raise
        pending = dict(current)
        if self.multi_user:
            name = current["username"]
            pending["username"] = name[: -len("_clone")] if name.endswith("_clone") else name + "_clone"
        pending["password"] = self.client.get_random_password(ExcludeCharacters=_EXCLUDE)["RandomPassword"]
        self.client.put_secret_value(
            SecretId=self.secret_id,
            ClientRequestToken=token,
            SecretString=json.dumps(pending),
            VersionStages=["AWSPENDING"],
        )

    def set(self, token: str) -> None:
        pending = self._value(VersionId=token, VersionStage="AWSPENDING")
        if _login(pending) is not None:
            return  # already set
        if self.multi_user:
            current = self._value(VersionStage="AWSCURRENT")
            admin = json.loads(self.client.get_secret_value(SecretId=current["masterarn"])["SecretString"])
            conn = _login({**admin, "host": current["host"], "port": current.get("port", 5432)}, current)
        else:
            conn = _login(self._value(VersionStage="AWSCURRENT"))
            if conn is None:
                conn = _login(self._value(VersionStage="AWSPREVIOUS"))
        if conn is None:
            raise RuntimeError("setSecret: no credential of the secret logs in")
        try:
            user = pending["username"]
            with conn.cursor() as cur:
                stored = psycopg2.extensions.encrypt_password(pending["password"], user, conn, "scram-sha-256")
                cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (user,))
                if cur.fetchone() is None:
                    cur.execute(
                        sql.SQL("CREATE ROLE {} WITH LOGIN PASSWORD %s").format(sql.Identifier(user)), (stored,)
                    )
                    current_user = self._value(VersionStage="AWSCURRENT")["username"]
                    cur.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(current_user), sql.Identifier(user)))
                else:
                    cur.execute(sql.SQL("ALTER USER {} WITH PASSWORD %s").format(sql.Identifier(user)), (stored,))
            conn.commit()
        finally:
            conn.close()

    def test(self, token: str) -> None:
        conn = _login(self._value(VersionId=token, VersionStage="AWSPENDING"))
        if conn is None:
            raise RuntimeError("testSecret: the pending credential does not log in")
        with conn, conn.cursor() as cur:
            cur.execute("SELECT NOW()")
        conn.close()

    def finish(self, token: str) -> None:
        stages = self.client.describe_secret(SecretId=self.secret_id)["VersionIdsToStages"]
        current = next(v for v, labels in stages.items() if "AWSCURRENT" in labels)
        if current == token:
            return
        self.client.update_secret_version_stage(
            SecretId=self.secret_id, VersionStage="AWSCURRENT", MoveToVersionId=token, RemoveFromVersionId=current
        )


def _login(value: dict[str, Any], database_of: dict[str, Any] | None = None) -> Any:
    """A connection with ``value``'s credential (to ``database_of``'s database), or None if it is refused."""
    where = database_of or value
    try:
        return psycopg2.connect(
            host=where["host"],
            port=int(where.get("port", 5432)),
            dbname=where.get("dbname", "postgres"),
            user=value["username"],
            password=value["password"],
            sslmode="disable" if where.get("ssl") is False or where.get("sslmode") == "disable" else "require",
            connect_timeout=5,
        )
    except psycopg2.OperationalError as exc:
        if "password authentication failed" in str(exc) or "not permitted to log in" in str(exc):
            return None
        raise


@dataclass
class AwsApp:
    cluster: PgCluster
    client: Any
    name: str
    user: str
    dbname: str
    admin_arn: str
    endpoint: str
    failures: list[str] = field(default_factory=list)
    logins: list[int] = field(default_factory=lambda: [0])

    @property
    def uri(self) -> str:
        return f"aws://{self.name}?{urlencode({'region': 'us-east-1', 'endpoint_url': self.endpoint})}"

    def value(self, stage: str = "AWSCURRENT") -> dict[str, Any]:
        return json.loads(self.client.get_secret_value(SecretId=self.name, VersionStage=stage)["SecretString"])

    def labels(self) -> dict[str, list[str]]:
        return self.client.describe_secret(SecretId=self.name)["VersionIdsToStages"]

    def connect(self, value: dict[str, Any] | None = None) -> Any:
        value = value or self.value()
        return self.cluster.connect(self.dbname, value["username"], value["password"])

    def run(self, statement: str, value: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        conn = self.connect(value)
        try:
            with conn, conn.cursor() as cur:
                cur.execute(statement)
                return cur.fetchall() if cur.description else []
        finally:
            conn.close()


def make_aws_app(cluster: PgCluster, endpoint: str, masterarn: bool) -> AwsApp:
    """A user owning a database with a table, its secret as AWS's functions read it (``engine``
    aurora-postgresql, ``port`` a string, ``ssl``, a key of the application's own) and the administrator's secret,
    named by its ARN in ``masterarn``."""
    suffix = uuid.uuid4().hex[:8]
    user, dbname, password = f"aws_{suffix}", f"awsdb_{suffix}", "canary-" + secrets.token_urlsafe(20)
    with cluster.connect() as conn:
        stored = psycopg2.extensions.encrypt_password(password, user, conn, "scram-sha-256")
    cluster.query(f'CREATE ROLE "{user}" LOGIN CREATEDB PASSWORD %s', (stored,))
    cluster.query(f'CREATE DATABASE "{dbname}" OWNER "{user}"')
    client = boto3.client("secretsmanager", region_name="us-east-1", endpoint_url=endpoint)
    common = {"engine": "aurora-postgresql", "host": cluster.host, "port": str(cluster.port), "dbname": dbname,
              "ssl": False}  # fmt: skip
    admin = client.create_secret(
        Name=f"pg-admin-{suffix}",
        SecretString=json.dumps({**common, "username": cluster.superuser, "password": cluster.password}),
    )
    value = {**common, "username": user, "password": password, "app_setting": {"pool": 5}}
    if masterarn:
        value["masterarn"] = admin["ARN"]
    client.create_secret(Name=f"pg-app-{suffix}", SecretString=json.dumps(value))
    app = AwsApp(cluster, client, f"pg-app-{suffix}", user, dbname, admin["ARN"], endpoint)
    app.run("CREATE TABLE orders (id serial PRIMARY KEY, item text NOT NULL); INSERT INTO orders (item) VALUES ('a')")
    return app
