"""What the service's two secrets share: a JSON document whose ``keys`` list holds the keys, each with a status."""

from __future__ import annotations

import json
from typing import Any


def stored_keys(text: str, unusable: type[Exception], format_name: str) -> list[Any]:
    """The non-empty ``keys`` list of a stored document; ``unusable(message)`` when there is none."""
    try:
        document = json.loads(text)
    except ValueError:
        raise unusable(f"the secret is not a JSON {format_name} document") from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise unusable(f"the secret has no 'keys' list (write it with the rotation runbook's {format_name} format)")
    return entries
