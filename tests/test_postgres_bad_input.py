"""Bad input to the PostgreSQL runbook: a clear error naming what is wrong, and nothing changed."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from flows.postgres import PgPolicy, rotate_postgres_credentials
from rotation.context import RotationOptions
from stores import Stage
from targets.passwords import PasswordPolicy
from targets.postgres.credential import PgSecretInvalid, new_login_value, parse_credential
from targets.postgres.login import HostUnreachable, LoginRefused
from targets.postgres.roles import UnknownUser
from tests.fixtures.ports import free_port
from tests.fixtures.postgres import PgApp
from tests.fixtures.prefect import PrefectServer


def _replace(app: PgApp, **changes: object) -> None:
    """Put a changed value as CURRENT (a second version), as an operator editing the secret would."""
    value = {**app.current(), **changes}
    value = {k: v for k, v in value.items() if v is not None}
    app.secret.stage(json.dumps(value), "edited")
    app.secret.promote("edited")


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"port": None, "host": "127.0.0.1"}, HostUnreachable, r"postgres://127\.0\.0\.1:\d+/db_\w+ is unreachable"),
        ({"username": "nobody_here"}, UnknownUser, r"has no user 'nobody_here'"),
        ({"password": None}, PgSecretInvalid, r"password: Field required"),
        ({"sslmode": "prefer"}, PgSecretInvalid, r"sslmode 'prefer' falls back to plain text"),
    ],
    ids=["unreachable-host", "missing-user", "missing-password", "downgradable-tls"],
)
def test_bad_secret_changes_nothing(
    prefect_server: PrefectServer,
    pg_app: Callable[..., PgApp],
    tmp_path: Path,
    changes: dict,
    error: type[Exception],
    message: str,
) -> None:
    app = pg_app()
    if "port" in changes:
        changes = {"port": free_port()}  # nothing listens there
    _replace(app, **changes)
    before, roles = app.secret.describe(), app.roles()
    options = RotationOptions(approve_promote=False, journal=str(tmp_path / "journal.db"))
    with pytest.raises(error, match=message) as failure:
        rotate_postgres_credentials(app.uri, policy=PgPolicy(grace_seconds=0), options=options)
    assert app.password not in str(failure.value)
    assert app.secret.describe() == before and app.roles() == roles


def test_wrong_admin_credentials_change_nothing(
    prefect_server: PrefectServer, pg_app: Callable[..., PgApp], tmp_path: Path
) -> None:
    app = pg_app()
    admin = json.loads(app.admin.read(Stage.CURRENT))
    app.admin.stage(json.dumps({**admin, "password": "not-the-admin-password"}), "wrong")
    app.admin.promote("wrong")
    before, roles = app.secret.describe(), app.roles()
    options = RotationOptions(approve_promote=False, journal=str(tmp_path / "journal.db"))
    with pytest.raises(LoginRefused, match=r"refused the login of administrator user 'postgres'.*administrator secret"):
        rotate_postgres_credentials(app.uri, options=options)
    assert app.secret.describe() == before and app.roles() == roles
    assert app.can_login(app.user, app.password)


def test_malformed_json_is_named_without_its_value() -> None:
    with pytest.raises(PgSecretInvalid, match=r"secret S is not JSON \(Expecting") as failure:
        parse_credential('{"password": "canary-123456", ', "secret S")
    assert "canary" not in str(failure.value)
    with pytest.raises(PgSecretInvalid, match=r"host: Field required; username: Field required"):
        parse_credential('{"password": "canary-123456"}', "secret S")
    with pytest.raises(PgSecretInvalid, match=r"engine is 'mysql'"):
        parse_credential('{"engine": "mysql", "host": "h", "username": "u", "password": "p"}', "secret S")


def test_malformed_secret_in_the_store_changes_nothing(
    prefect_server: PrefectServer, pg_app: Callable[..., PgApp], tmp_path: Path
) -> None:
    app = pg_app()
    app.secret.stage('{"engine": "postgres", "host": ', "broken")
    app.secret.promote("broken")
    before, roles = app.secret.describe(), app.roles()
    options = RotationOptions(approve_promote=False, journal=str(tmp_path / "journal.db"))
    with pytest.raises(PgSecretInvalid, match=r"version broken of local://.* is not JSON"):
        rotate_postgres_credentials(app.uri, options=options)
    assert app.secret.describe() == before and app.roles() == roles


def test_tls_settings_are_passed_as_given() -> None:
    base = {"host": "db", "username": "u", "password": "p"}
    assert parse_credential(json.dumps(base), "s").effective_sslmode == "verify-full"  # verified by default
    assert parse_credential(json.dumps({**base, "ssl": False}), "s").effective_sslmode == "disable"
    kwargs = parse_credential(json.dumps({**base, "sslmode": "verify-ca", "sslrootcert": "/ca.pem"}), "s")
    assert kwargs.connect_kwargs("u", "p") | {"password": None} == {
        "host": "db", "port": 5432, "user": "u", "password": None, "dbname": "postgres", "sslmode": "verify-ca",
        "connect_timeout": 5, "application_name": "secret-rotation", "sslrootcert": "/ca.pem",
    }  # fmt: skip


def test_a_staged_value_keeps_every_field_as_aws_wrote_it() -> None:
    current = {"engine": "aurora-postgresql", "host": "db", "port": "5432", "username": "app", "password": "p",
               "dbname": "orders", "ssl": "true", "masterarn": "arn:aws:secretsmanager:eu-west-1:123456789012:"
               "secret:admin-AbCdEf", "proxy": {"endpoint": "p.example"}}  # fmt: skip
    staged = json.loads(new_login_value(json.dumps(current), "app_clone"))
    assert list(staged) == list(current)
    assert {k: v for k, v in staged.items() if k not in ("username", "password")} == {
        k: v for k, v in current.items() if k not in ("username", "password")
    }
    assert staged["username"] == "app_clone" and staged["password"] != "p"
    assert parse_credential(json.dumps(current), "s").port == 5432


def test_password_policy_follows_get_random_password_options() -> None:
    policy = PasswordPolicy(length=40, exclude_characters="abc0", exclude_punctuation=True)
    for _ in range(50):
        password = policy.new_password()
        assert len(password) == 40 and not set(password) & set("abc0")
        assert any(c.islower() for c in password) and any(c.isupper() for c in password)
        assert any(c.isdigit() for c in password) and password.isalnum()
    default = PasswordPolicy().new_password()
    assert not set(default) & set("\"'\\@/:?#%&=+ ") and any(not c.isalnum() for c in default)
    with pytest.raises(ValueError, match="excludes every character"):
        PasswordPolicy(exclude_lowercase=True, exclude_uppercase=True, exclude_numbers=True, exclude_punctuation=True)
    with pytest.raises(ValueError, match="greater than or equal to 8"):
        PasswordPolicy(length=4)


def test_an_arn_in_masterarn_of_a_secret_outside_aws_is_named(
    prefect_server: PrefectServer, pg_app: Callable[..., PgApp], tmp_path: Path
) -> None:
    app = pg_app()
    _replace(app, masterarn="arn:aws:secretsmanager:us-east-1:123456789012:secret:admin-AbCdEf")
    before, roles = app.secret.describe(), app.roles()
    options = RotationOptions(approve_promote=False, journal=str(tmp_path / "journal.db"))
    with pytest.raises(PgSecretInvalid, match=r"masterarn in local://.* is an AWS ARN, but the secret is not in AWS"):
        rotate_postgres_credentials(app.uri, policy=PgPolicy(grace_seconds=0), options=options)
    assert app.secret.describe() == before and app.roles() == roles
