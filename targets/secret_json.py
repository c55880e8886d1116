"""Reading a credential stored as a JSON object into its pydantic model, with errors that never quote the value.

Every target that keeps a credential as JSON (PostgreSQL, Redis, SMTP) reads it the same way: register the value
and its password for redaction before anything can fail, then report each problem as ``field: what is wrong``
with pydantic's input left out, on one line that names where the value came from.
"""

from __future__ import annotations

import json
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from errors import BadInput
from redaction import register_secret

Model = TypeVar("Model", bound=BaseModel)


def parse_json_credential(
    text: str, where: str, model: type[Model], error: type[BadInput], what: str, shape: str
) -> Model:
    """``text`` as ``model``; ``what`` names the credential ("a PostgreSQL credential"), ``shape`` the fields to
    store. Raises ``error`` with one line naming ``where`` and every field at fault."""
    register_secret(text)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{where} is not JSON ({exc.msg} at line {exc.lineno}); store a JSON object with {shape}") from None
    if not isinstance(data, dict):
        raise error(f"{where} is JSON but not an object; store an object with {shape}")
    if isinstance(data.get("password"), str):
        register_secret(data["password"])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(_problem(e["loc"], e["msg"]) for e in exc.errors(include_input=False))
        raise error(f"{where} is not {what}: {problems}") from None


def _problem(location: tuple[int | str, ...], message: str) -> str:
    """``field: what is wrong``; a check of the whole object (a model validator) names its fields itself."""
    message = message.removeprefix("Value error, ")
    return f"{'.'.join(map(str, location))}: {message}" if location else message
