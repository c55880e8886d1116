"""The runbook core: ``with rotation(secret, options, consumers) as r:`` and its named steps (see
:mod:`rotation.context`), the journal, leases, approvals, the compensation stack and the runbook registry."""

from rotation.compensation import Undo
from rotation.context import Rotation, RotationRolledBack, rotation
from rotation.options import RotationOptions
from rotation.runbooks import runbook

__all__ = ["Rotation", "RotationOptions", "RotationRolledBack", "Undo", "rotation", "runbook"]
