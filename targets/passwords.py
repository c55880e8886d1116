"""New passwords with the options of AWS Secrets Manager's ``GetRandomPassword``: a length, characters to leave
out, classes to leave out or require, so that a password never breaks a consumer's connection string.

The default leaves out what a libpq keyword string, a connection URI or a shell would have to quote or escape
(quotes, backslash, ``@ / : ? # % & = +``, spaces), the characters AWS's own rotation functions exclude among them.
"""

from __future__ import annotations

import secrets
import string

from pydantic import BaseModel, Field, model_validator

_PUNCTUATION = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"  # GetRandomPassword's punctuation set


class PasswordPolicy(BaseModel):
    """How a new password is made (the fields of ``GetRandomPassword``, by their meaning)."""

    length: int = Field(default=32, ge=8, le=4096, description="Characters in the password.")
    exclude_characters: str = Field(
        default="\"'\\@/:?#%&=+ ", description="Characters never used (default: those a connection string quotes)."
    )
    exclude_numbers: bool = False
    exclude_punctuation: bool = False
    exclude_uppercase: bool = False
    exclude_lowercase: bool = False
    require_each_included_type: bool = Field(
        default=True, description="At least one character of every class not excluded."
    )

    def classes(self) -> list[str]:
        """The character classes in use, each without the excluded characters; empty ones left out."""
        chosen = [
            (self.exclude_lowercase, string.ascii_lowercase),
            (self.exclude_uppercase, string.ascii_uppercase),
            (self.exclude_numbers, string.digits),
            (self.exclude_punctuation, _PUNCTUATION),
        ]
        kept = ("".join(c for c in chars if c not in self.exclude_characters) for skip, chars in chosen if not skip)
        return [chars for chars in kept if chars]

    @model_validator(mode="after")
    def _possible(self) -> PasswordPolicy:
        classes = self.classes()
        if not classes:
            raise ValueError("the password policy excludes every character; allow at least one class")
        if self.require_each_included_type and self.length < len(classes):
            raise ValueError(
                f"length {self.length} is too short to hold one character of each of {len(classes)} classes"
            )
        return self

    def new_password(self) -> str:
        """A random password that follows this policy (``secrets``: cryptographically random)."""
        classes = self.classes()
        alphabet = "".join(classes)
        while True:
            password = "".join(secrets.choice(alphabet) for _ in range(self.length))
            if not self.require_each_included_type or all(any(c in chars for c in password) for chars in classes):
                return password
