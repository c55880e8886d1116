"""Helpers for checking that a secret value never reaches an error: a recognisable value, and all an error shows."""

from __future__ import annotations

import uuid


def canary() -> str:
    """A unique value that is easy to search for."""
    return f"canary-{uuid.uuid4().hex}"


def error_text(error: BaseException) -> str:
    """Everything an error and the errors chained to it show: messages, reprs and arguments."""
    parts: list[str] = []
    seen: BaseException | None = error
    while seen is not None:
        parts += [str(seen), repr(seen), repr(seen.args)]
        seen = seen.__cause__ or seen.__context__
    return "\n".join(parts)
