"""Store errors. Messages name the store and the secret, never a value."""

from __future__ import annotations


class StoreError(Exception):
    """Base of every store error; ``str()`` is a message for the person running the rotation."""


class InvalidStoreURI(StoreError, ValueError):
    """A store URI that cannot be parsed or names an unknown kind of store."""


class SecretNotFound(StoreError):
    """The secret does not exist in the store."""


class VersionNotFound(StoreError):
    """The secret exists but has no version at the stage or id asked for."""


class SecretExists(StoreError):
    """``create`` was asked for a secret that already exists."""


class StagingConflict(StoreError):
    """Another rotation holds the PENDING stage, or a concurrent writer changed the secret first."""


class StoreUnavailable(StoreError):
    """The secret manager could not be reached or answered with an error after retries."""


class StorePermissionDenied(StoreError):
    """The credentials in use may not do what was asked."""
