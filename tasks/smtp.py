"""Steps of the SMTP credentials runbook: inspect the secret, verify logins, send a test message, and for Amazon SES
create the second IAM access key (staging the SMTP password derived from it), then deactivate and delete the old.

Every task takes store URIs and version ids and reads the credentials itself; it returns addresses, user names,
access key ids and timings, never a password or a secret access key.

Where the SES path keeps what it needs: the staged version is the current secret with ``username`` set to the new
access key's id (SES's SMTP user name is the key id) and ``password`` to the SMTP password derived from its secret,
so the store's versions alone say which key each version uses, and an undo finds the key it must delete there. The
secret access key itself is held by no one: it exists in memory from ``CreateAccessKey`` until its password is
derived. Between creating the key and staging its password, a tag on the IAM user
(``secret-rotation:<rotation id>`` = the key id) marks the key, so that a run that died in between deletes that
key (whose secret nobody has) instead of leaving it to fill the user's second slot.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from errors import BadInput, CheckFailed, Conflict, Refused
from redaction import fingerprint
from stores import SecretStore, Stage, open_store
from stores.errors import VersionNotFound
from targets.ses.access_keys import AccessKey, IamUser, mark_key
from targets.ses.password import smtp_password
from targets.smtp.credential import SmtpCredential, parse_credential
from targets.smtp.login import LoginOutcome, SentMessage, check_login, send_test_message, try_login
from tasks import retry_if_transient, run_logger

# Secret material passes through every task: no cache, no persisted result, retried only when unreachable.
_OPTIONS = {
    "cache_policy": NO_CACHE,
    "persist_result": False,
    "retries": 2,
    "retry_delay_seconds": [1, 5],
    "retry_condition_fn": retry_if_transient,
}


class SmtpPlan(BaseModel):
    """What the runbook found before changing anything: where, who, which path, and the user's access keys."""

    address: str
    username: str
    current_version: str
    path: Literal["hand-set", "ses"]
    iam_user: str | None = None
    region: str | None = None
    access_keys: list[AccessKey] = []
    login: LoginOutcome
    checked_at: datetime  # when the current login last worked (for report_password_window)


class AccessKeyCreated(BaseModel):
    """The new access key of an SES rotation and the fingerprint of the credential staged from it."""

    iam_user: str
    access_key_id: str
    region: str
    staged_fingerprint: str
    created: bool  # False: an earlier attempt of this rotation had created it already


class AccessKeyChange(BaseModel):
    """What a retire or undo step did to one access key."""

    iam_user: str
    access_key_id: str | None  # None: nothing was created, so nothing to undo
    action: Literal["deactivate", "delete"]
    changed: bool  # False: already done
    last_used_at: datetime | None = None
    last_used_service: str | None = None

    @classmethod
    def of(
        cls,
        user: IamUser,
        key_id: str | None,
        action: Literal["deactivate", "delete"],
        changed: bool,
        key: AccessKey | None = None,
    ) -> AccessKeyChange:
        """The change, with IAM's record of the key's last use when the key was read first."""
        if changed:
            done = {"deactivate": "Deactivated", "delete": "Deleted"}[action]
            run_logger(__name__).info("%s access key %s of IAM user %r", done, key_id, user.name)
        used = {"last_used_at": key.last_used_at, "last_used_service": key.last_used_service} if key else {}
        return cls(iam_user=user.name, access_key_id=key_id, action=action, changed=changed, **used)


class PasswordWindow(BaseModel):
    """How long consumers of a single-password login had a password that no longer worked.

    The window opens when the person changes the password at the provider and closes at promotion. It opened after
    the old password last logged in (``old_login_at``, the plan's check) and before the new one was staged, so its
    length lies between ``at_least_seconds`` and ``at_most_seconds``.
    """

    single_password: bool  # the old password no longer logs in: the provider keeps one password per user
    measured_at: datetime
    at_least_seconds: float | None = None
    at_most_seconds: float | None = None


def _credential(store: SecretStore, secret: str, version_id: str) -> SmtpCredential:
    return parse_credential(store.read_version(version_id), f"version {version_id} of {secret}")


def _current(store: SecretStore, secret: str) -> tuple[str, SmtpCredential]:
    version = store.describe().version_at(Stage.CURRENT)
    if version is None:
        raise VersionNotFound(f"{secret} has no CURRENT version; store the SMTP credential first")
    return version, _credential(store, secret, version)


def _iam_user(credential: SmtpCredential, secret: str) -> IamUser:
    if credential.ses is None:
        raise BadInput(
            f"{secret} has no ses settings, so its password is set by hand at the provider: stage the new one with "
            '`rotate stage`; add "ses": {"iam_user": ..., "region": ...} for an SES credential'
        )
    assert credential.ses_region is not None  # the model refuses ses settings without a region
    return IamUser(credential.ses.iam_user, credential.ses_region)


def _key_in_use(user: IamUser, keys: list[AccessKey], credential: SmtpCredential, secret: str) -> AccessKey:
    key = next((k for k in keys if k.access_key_id == credential.username), None)
    if key is None:
        raise CheckFailed(
            f"the username of {secret} ({credential.username}) is not an access key of IAM user {user.name!r}; "
            "set username to the id of the key the SMTP password was derived from, or fix ses.iam_user"
        )
    if key.status != "Active":
        raise CheckFailed(f"access key {key.access_key_id} of {secret} is Inactive: reactivate it before rotating")
    return key


@task(**_OPTIONS)
def inspect_smtp_secret(secret: str) -> SmtpPlan:
    """Before anything changes: the secret is an SMTP credential, its login works over verified TLS, and for SES
    its access key is an active key of the IAM user, which has room for a second one."""
    store = open_store(secret)
    version, credential = _current(store, secret)
    login = check_login(credential, "current")
    checked_at = datetime.now(UTC)
    if credential.ses is None:
        return SmtpPlan(
            address=credential.address,
            username=credential.username,
            current_version=version,
            path="hand-set",
            login=login,
            checked_at=checked_at,
        )
    user = _iam_user(credential, secret)
    keys = user.keys()
    _key_in_use(user, keys, credential, secret)
    user.check_room_for_a_key(keys, credential.username)
    return SmtpPlan(
        address=credential.address,
        username=credential.username,
        current_version=version,
        path="ses",
        iam_user=user.name,
        region=credential.ses_region,
        access_keys=keys,
        login=login,
        checked_at=checked_at,
    )


@task(**_OPTIONS)
def smtp_login_accepted(secret: str, version_id: str, settle_seconds: float = 0) -> LoginOutcome:
    """The credential of ``version_id`` logs in over verified TLS (asked again for up to ``settle_seconds`` while
    refused: SES accepts a new access key some seconds after IAM created it)."""
    store = open_store(secret)
    return check_login(_credential(store, secret, version_id), "staged", accepted=True, settle_seconds=settle_seconds)


@task(**_OPTIONS)
def smtp_login_refused(secret: str, version_id: str, settle_seconds: float = 0) -> LoginOutcome:
    """The (revoked) credential of ``version_id`` is refused, over verified TLS (asked again for up to
    ``settle_seconds`` while it still works)."""
    store = open_store(secret)
    credential = _credential(store, secret, version_id)
    return check_login(credential, "revoked", accepted=False, settle_seconds=settle_seconds)


@task(**_OPTIONS)
def send_smtp_test_message(secret: str, version_id: str, sender: str, recipient: str) -> SentMessage:
    """Send a short message from ``sender`` to ``recipient`` through the credential of ``version_id``."""
    store = open_store(secret)
    return send_test_message(_credential(store, secret, version_id), "staged", sender, recipient)


@task(**_OPTIONS)
def report_password_window(
    secret: str, rotation_id: str, old_version: str, old_login_at: datetime | str | None = None
) -> PasswordWindow:
    """Right after promotion: does the old password still log in? If not, the provider keeps one password per
    user, and the window in which consumers held a refused password is measured (see :class:`PasswordWindow`).

    ``old_login_at`` is :attr:`SmtpPlan.checked_at` (an ISO string once it went through the journal)."""
    if isinstance(old_login_at, str):
        old_login_at = datetime.fromisoformat(old_login_at)
    store = open_store(secret)
    old, new = _credential(store, secret, old_version), _credential(store, secret, rotation_id)
    now = datetime.now(UTC)
    if old.username != new.username or try_login(old, "previous").accepted:
        return PasswordWindow(single_password=False, measured_at=now)
    staged_at = next((v.created_at for v in store.describe().versions if v.version_id == rotation_id), None)
    window = PasswordWindow(
        single_password=True,
        measured_at=now,
        at_least_seconds=(now - staged_at).total_seconds() if staged_at else None,
        at_most_seconds=(now - old_login_at).total_seconds() if old_login_at else None,
    )
    run_logger(__name__).warning(
        "%s keeps one password per user: consumers of %r held a refused password for %s s (at least) to %s s (at "
        "most) before the promotion",
        old.address,
        old.username,
        *("?" if s is None else f"{s:.3f}" for s in (window.at_least_seconds, window.at_most_seconds)),
    )
    return window


# -- Amazon SES: the IAM user's access keys -------------------------------------------------------------------------


@task(**_OPTIONS)
def create_ses_access_key(secret: str, rotation_id: str) -> AccessKeyCreated:
    """Create the IAM user's second access key and stage, under ``rotation_id``, the current credential with the
    key's id as username and the SES SMTP password derived from it (for the secret's region).

    Already staged by this rotation: nothing changes. A user at IAM's two-key limit, or a PENDING version held by
    another rotation, is refused before anything changes.
    """
    store = open_store(secret)
    _, current = _current(store, secret)
    user = _iam_user(current, secret)
    mark_key(rotation_id)  # a rotation id IAM cannot tag with fails here, before any change
    try:
        staged_value = store.read_version(rotation_id)
    except VersionNotFound:
        staged_value = None
    created = staged_value is None
    if staged_value is None:
        staged_value = _create_and_stage(store, secret, rotation_id, current, user)
    staged = parse_credential(staged_value, f"version {rotation_id} of {secret}")
    if not created and user.key(staged.username) is None:
        raise CheckFailed(
            f"version {rotation_id} of {secret} names access key {staged.username}, which IAM user {user.name!r} no "
            "longer has; roll this rotation back"
        )
    user.unmark(rotation_id)  # the store names the key from now on
    return AccessKeyCreated(
        iam_user=user.name,
        access_key_id=staged.username,
        region=user.region,
        staged_fingerprint=fingerprint(staged_value),
        created=created,
    )


def _create_and_stage(store: SecretStore, secret: str, rotation_id: str, current: SmtpCredential, user: IamUser) -> str:
    """Create the key (after the checks that must come before any change) and stage its credential; returns it."""
    pending = store.describe().version_at(Stage.PENDING)
    if pending not in (None, rotation_id):
        raise Conflict(f"{secret} has a PENDING version of another rotation ({pending}); finish or roll it back first")
    keys = user.keys()
    orphan = user.marked_key(rotation_id)
    if orphan is not None and orphan != current.username and any(k.access_key_id == orphan for k in keys):
        # An earlier attempt created this key and died before its password was stored: nobody holds its secret.
        user.delete_key(orphan)
        run_logger(__name__).warning("Deleted access key %s, created by an earlier attempt of %s", orphan, rotation_id)
        keys = [k for k in keys if k.access_key_id != orphan]
    _key_in_use(user, keys, current, secret)
    user.check_room_for_a_key(keys, current.username)
    new = user.create_key()
    try:
        user.mark(rotation_id, new.access_key_id)
    except BaseException:
        user.delete_key(new.access_key_id)  # unmarked, it could not be told from a key someone else uses
        raise
    password = smtp_password(new.secret_access_key.get_secret_value(), user.region)
    value = current.with_login(new.access_key_id, password)
    store.stage(value, rotation_id)
    logged = (new.access_key_id, user.name, user.region)
    run_logger(__name__).info("Created access key %s of IAM user %r; staged its SMTP credential for %s", *logged)
    return value


@task(**_OPTIONS)
def delete_created_access_key(secret: str, rotation_id: str) -> AccessKeyChange:
    """The undo of :func:`create_ses_access_key`: delete the access key the rotation created and discard its staged
    version. Idempotent; the key is found in the staged version (or the user's tag), never in a copy."""
    store = open_store(secret)
    current_version, current = _current(store, secret)
    if current_version == rotation_id:
        raise Refused(
            f"the credential of rotation {rotation_id} is CURRENT in {secret}; revert the secret before deleting its "
            "access key"
        )
    user = _iam_user(current, secret)
    try:
        key_id: str | None = _credential(store, secret, rotation_id).username
    except VersionNotFound:
        key_id = user.marked_key(rotation_id)
    if key_id == current.username:
        raise Refused(f"access key {key_id} is the one the CURRENT version of {secret} uses; it is not deleted")
    changed = user.delete_key(key_id) if key_id else False
    user.unmark(rotation_id)
    store.discard(rotation_id)
    return AccessKeyChange.of(user, key_id, "delete", changed)


def _old_key(store: SecretStore, secret: str, rotation_id: str, old_version: str) -> tuple[IamUser, str]:
    """The IAM user and the old version's access key, once the rotation's credential is CURRENT and uses another."""
    current_version = store.describe().version_at(Stage.CURRENT)
    if current_version != rotation_id:
        raise Refused(
            f"the credential of rotation {rotation_id} is not CURRENT in {secret} (CURRENT is {current_version}); "
            "the old access key stays as it is"
        )
    new, old = _credential(store, secret, rotation_id), _credential(store, secret, old_version)
    user = _iam_user(new, secret)
    if old.username == new.username or old.ses is None or old.ses.iam_user != user.name:
        raise BadInput(
            f"versions {old_version} and {rotation_id} of {secret} do not name two access keys of IAM user "
            f"{user.name!r}; give the version the rotation replaced as old_version"
        )
    return user, old.username


@task(**_OPTIONS)
def deactivate_old_access_key(secret: str, rotation_id: str, old_version: str) -> AccessKeyChange:
    """Deactivate the access key of ``old_version`` (the retire step): its SMTP password stops working. Only once
    the rotation's credential is CURRENT. Idempotent. Returns IAM's record of the key's last use."""
    store = open_store(secret)
    user, key_id = _old_key(store, secret, rotation_id, old_version)
    key = user.key(key_id)
    if key is None:
        return AccessKeyChange.of(user, key_id, "deactivate", changed=False)
    return AccessKeyChange.of(user, key_id, "deactivate", user.set_status(key_id, "Inactive"), key)


@task(**_OPTIONS)
def delete_old_access_key(secret: str, rotation_id: str, old_version: str) -> AccessKeyChange:
    """Delete the access key of ``old_version``, after the second grace period. Refused while the key is active
    (deactivation comes first, so a consumer still using it has failed visibly) or while the secret's CURRENT or
    PENDING version uses it. Idempotent."""
    store = open_store(secret)
    user, key_id = _old_key(store, secret, rotation_id, old_version)
    key = user.key(key_id)
    if key is None:
        return AccessKeyChange.of(user, key_id, "delete", changed=False)
    if key.status == "Active":
        raise Refused(
            f"access key {key_id} of IAM user {user.name!r} is still active: deactivate it and wait the second grace "
            "period before deleting it"
        )
    pending = store.describe().version_at(Stage.PENDING)
    if pending is not None and _credential(store, secret, pending).username == key_id:
        raise Refused(f"the PENDING version {pending} of {secret} uses access key {key_id}; it is not deleted")
    return AccessKeyChange.of(user, key_id, "delete", user.delete_key(key_id), key)
