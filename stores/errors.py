"""Store errors: one type per condition, each a branch of the project's error tree (``errors``).

Every adapter maps its SDK's errors onto these in one place (its ``_translate``); the stage transitions, written once
in :mod:`stores.base`, raise the same types for every store. Messages name the store and the secret, never a value.
"""

from __future__ import annotations

from errors import BadInput, Conflict, NotFound, PermissionDenied, RotationError, Unreachable


class StoreError(RotationError):
    """Base of every store error; ``str()`` is a message for the person running the rotation."""


class InvalidStoreURI(StoreError, BadInput, ValueError):
    """A store URI that cannot be parsed, names an unknown kind of store, or a store that cannot be used as named."""


class InvalidRotationId(StoreError, BadInput):
    """A rotation id that this secret manager cannot use to name a version."""


class InvalidRequest(StoreError, BadInput):
    """The secret manager refused the request as invalid, or holds a value this project cannot use (binary data)."""


class SecretNotFound(StoreError, NotFound):
    """The secret does not exist in the store."""


class VersionNotFound(StoreError, NotFound):
    """The secret exists but has no version at the stage or id asked for."""


class SecretExists(StoreError, Conflict):
    """``create`` was asked for a secret that already exists."""


class StagingConflict(StoreError, Conflict):
    """Another rotation holds the PENDING stage, or a concurrent writer changed the secret first."""


class StoreUnavailable(StoreError, Unreachable):
    """The secret manager could not be reached or answered with an error after retries."""


class StorePermissionDenied(StoreError, PermissionDenied):
    """The credentials in use may not do what was asked."""
