"""The store interface: one versioned secret with the stages CURRENT, PENDING and PREVIOUS.

The model is AWS Secrets Manager's: a rotation stages a new version under its rotation id (PENDING), promotes it
(CURRENT; the old current becomes PREVIOUS) and, on failure, reverts or discards it. Every adapter maps these calls
onto its own manager's versioning. Values are plain strings (JSON for structured secrets); they never appear in an
exception message, a ``repr`` or a description.
"""

from __future__ import annotations

import abc
import enum
from datetime import datetime
from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from stores.errors import InvalidStoreURI
from stores.uri import SecretURI


class Stage(enum.StrEnum):
    CURRENT = "CURRENT"
    PENDING = "PENDING"
    PREVIOUS = "PREVIOUS"


class VersionInfo(BaseModel):
    """One version of a secret, without its value."""

    model_config = ConfigDict(frozen=True)

    version_id: str
    stages: tuple[Stage, ...] = ()
    created_at: datetime | None = None


class SecretDescription(BaseModel):
    """What a store can say about a secret without revealing it."""

    model_config = ConfigDict(frozen=True)

    uri: str
    versions: tuple[VersionInfo, ...]

    def version_at(self, stage: Stage) -> str | None:
        return next((v.version_id for v in self.versions if stage in v.stages), None)


class SecretStore(abc.ABC):
    """One secret in one secret manager, named by a :class:`SecretURI`.

    Every mutating call is idempotent for a given ``rotation_id`` so that a step can be retried or resumed after a
    crash: staging the same rotation twice keeps the first value, promoting a version that is already CURRENT does
    nothing, discarding a version that is gone does nothing.
    """

    #: The URI options this store accepts, each with how to write it (for the error message).
    OPTIONS: ClassVar[dict[str, str]] = {}

    def __init__(self, uri: SecretURI) -> None:
        unknown = set(uri.options) - set(self.OPTIONS)
        if unknown:
            accepted = ", ".join(self.OPTIONS.values()) or "no options"
            raise InvalidStoreURI(
                f"unknown option(s) {', '.join(sorted(unknown))} in {uri.display}: the {uri.scheme} store accepts "
                f"{accepted}"
            )
        self.uri = uri.model_copy(update={"options": self.canonical_options(uri)})

    def canonical_options(self, uri: SecretURI) -> dict[str, str]:
        """``uri``'s options without those that say what this store would do anyway, so that every spelling of
        one secret has one identity (``self.uri.display``)."""
        return dict(uri.options)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri.display!r})"

    @abc.abstractmethod
    def create(self, value: str) -> str:
        """Create the secret with a first CURRENT version; fail if it exists. Returns the version id."""

    @abc.abstractmethod
    def read(self, stage: Stage = Stage.CURRENT) -> str:
        """The value at ``stage``; :class:`~stores.errors.VersionNotFound` if no version carries it."""

    @abc.abstractmethod
    def read_version(self, version_id: str) -> str:
        """The value of one version; :class:`~stores.errors.VersionNotFound` if it does not exist."""

    @abc.abstractmethod
    def stage(self, value: str, rotation_id: str) -> str:
        """Store ``value`` as the PENDING version ``rotation_id``.

        Already staged under this id (or already promoted): nothing changes. PENDING held by another rotation:
        :class:`~stores.errors.StagingConflict`. Returns the version id.
        """

    @abc.abstractmethod
    def promote(self, rotation_id: str) -> None:
        """Make version ``rotation_id`` CURRENT; the old CURRENT becomes PREVIOUS; PENDING is removed."""

    @abc.abstractmethod
    def revert(self, rotation_id: str, previous_version: str | None) -> None:
        """Undo :meth:`promote`: CURRENT goes back to the version promotion made PREVIOUS.

        ``previous_version`` is the version that was PREVIOUS before the rotation (recorded when it was planned);
        it gets the PREVIOUS stage back. Version ``rotation_id`` is left with no stage. Nothing to undo: no change.
        """

    @abc.abstractmethod
    def discard(self, rotation_id: str) -> None:
        """Remove the staged version ``rotation_id`` if it is not CURRENT; nothing staged: no change."""

    @abc.abstractmethod
    def describe(self) -> SecretDescription:
        """Versions, stages and dates; never values."""

    @abc.abstractmethod
    def list(self) -> list[str]:
        """Names of the secrets in the same place (same file, account and region, mount, namespace...)."""
