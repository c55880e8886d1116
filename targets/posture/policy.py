"""The posture policy: what the production checklist demands of every secret, as numbers a report checks.

Read from a JSON or YAML file by ``rotate posture --policy FILE`` (or passed to the flow). Every field has a default
that matches what this project's runbooks produce, so a store rotated by them passes with the defaults.
"""

from __future__ import annotations

import fnmatch

from pydantic import BaseModel, ConfigDict, Field


class AgeRule(BaseModel):
    """A maximum age for the secrets whose name or URI matches ``match`` (shell-style: ``prod/db/*``, ``*jwt*``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    match: str = Field(min_length=1)
    max_age_days: float = Field(gt=0)


class PosturePolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    #: The CURRENT value of a secret may be this old; ``max_age`` rules (first match wins) override it per secret.
    max_age_days: float = Field(default=90, gt=0)
    max_age: tuple[AgeRule, ...] = ()
    #: Key sizes: HS256 and other symmetric keys in bits they can carry, RSA modulus bits, EC curve bits.
    min_symmetric_bits: int = Field(default=256, ge=1)
    min_rsa_bits: int = Field(default=2048, ge=1)
    min_ec_bits: int = Field(default=256, ge=1)
    #: Passwords: length, the bits their length and character set can carry, and character classes (lower case,
    #: upper case, digits, others).
    min_password_length: int = Field(default=16, ge=1)
    min_password_bits: float = Field(default=96, ge=0)
    min_password_classes: int = Field(default=2, ge=1, le=4)
    #: A certificate must be renewed this many days before it expires; None: once two thirds of its validity have
    #: passed (as cert-manager does, and as the SAML runbook's ``report_certificate_expiry``).
    certificate_renew_days: float | None = Field(default=None, gt=0)
    #: Every secret needs a deployment with an active schedule that rotates it.
    require_schedule: bool = True
    #: A rotation waiting for its follow-up run longer than this past its due time is stuck.
    stuck_after_minutes: float = Field(default=60, gt=0)
    #: With a backup destination: the newest backup holding a secret, and the last restore drill, may be this old.
    max_backup_age_hours: float = Field(default=36, gt=0)
    max_drill_age_days: float = Field(default=8, gt=0)

    def max_age_of(self, name: str, uri: str) -> float:
        for rule in self.max_age:
            if fnmatch.fnmatchcase(name, rule.match) or fnmatch.fnmatchcase(uri, rule.match):
                return rule.max_age_days
        return self.max_age_days
