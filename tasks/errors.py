"""The base of every error a person running a rotation can act on.

Its message names what was wrong and what to do, and never holds a secret value; the command line prints it as one
line. Store errors (``stores.errors.StoreError``) are the same kind, kept apart because stores know nothing of tasks.
"""

from __future__ import annotations


class RotationError(Exception):
    """A failure explained in its message: bad input, a refused credential, a failed check, a rejection."""
