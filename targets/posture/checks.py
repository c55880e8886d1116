"""The production checklist as checks over facts: each broken rule is a finding that says what to do.

Sections, in the checklist's order: rotated in time (age against the policy, a deployment with an active schedule),
not stuck (a rotation stopped half-done or failed), strong (key bits, password length and classes), unique (the same
material in two secrets, compared by keyed fingerprints), certificates (days to expiry), backed up (the newest backup
holding each secret, the last restore drill). A finding is ``fail`` when it breaks the policy (the report's exit
status is then non-zero) and ``warn`` when it needs a look but breaks nothing yet.
"""

from __future__ import annotations

import enum
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, computed_field

from targets.posture.facts import BackupFacts, RotationFacts, ScheduleFacts, SecretFacts
from targets.posture.policy import PosturePolicy
from targets.posture.shapes import Strength


class Section(enum.StrEnum):
    ROTATED = "rotated in time"
    STUCK = "not stuck half-done"
    STRONG = "strong enough"
    UNIQUE = "unique per environment"
    CERTIFICATES = "certificates"
    BACKED_UP = "backed up and restorable"


Severity = Literal["fail", "warn"]


class Finding(BaseModel):
    model_config = ConfigDict(frozen=True)

    section: Section
    severity: Severity
    check: str  # a short stable name: too-old, no-schedule, schedule-inactive, stuck, weak, duplicate...
    secret: str | None  # None: the finding is about the backups as a whole
    what: str
    advice: str


class SecretRow(BaseModel):
    """One line of the report's table."""

    model_config = ConfigDict(frozen=True)

    secret: str
    environment: str
    shape: str | None
    age_days: float | None
    max_age_days: float
    last_rotation: str | None  # "completed 2026-11-02", "rolled-back 2026-11-30"...
    next_rotation: datetime | None
    schedule: str  # "active", "inactive", "none"
    weakest: str | None  # "256 bits", "password 12 chars, 2 classes"
    duplicates: tuple[str, ...]
    certificate_days: float | None
    last_backup_hours: float | None
    status: Literal["ok", "warn", "fail"]


class PostureReport(BaseModel):
    model_config = ConfigDict(frozen=True)

    generated_at: datetime
    stores: tuple[str, ...]
    backups: tuple[str, ...]  # the destinations checked; none: backups were not checked
    policy: PosturePolicy
    secrets: tuple[SecretRow, ...]
    findings: tuple[Finding, ...]

    @computed_field
    @property
    def policy_broken(self) -> bool:
        return any(f.severity == "fail" for f in self.findings)

    @computed_field
    @property
    def counts(self) -> dict[str, int]:
        return {
            "secrets": len(self.secrets),
            "fail": sum(f.severity == "fail" for f in self.findings),
            "warn": sum(f.severity == "warn" for f in self.findings),
        }


def _days(delta: timedelta) -> float:
    return round(delta.total_seconds() / 86400, 1)


def _minimum(strength: Strength, policy: PosturePolicy) -> str | None:
    """Why ``strength`` is below the policy, or None."""
    if strength.bits is None:
        return "could not be read"
    if strength.kind == "password":
        problems = []
        if (strength.length or 0) < policy.min_password_length:
            problems.append(f"{strength.length} characters (at least {policy.min_password_length})")
        if len(strength.classes) < policy.min_password_classes:
            problems.append(f"{len(strength.classes)} character classes (at least {policy.min_password_classes})")
        if strength.bits < policy.min_password_bits:
            problems.append(f"about {strength.bits:.0f} bits (at least {policy.min_password_bits:.0f})")
        return ", ".join(problems) or None
    least = {"symmetric": policy.min_symmetric_bits, "rsa": policy.min_rsa_bits, "ec": policy.min_ec_bits}
    if strength.bits < least[strength.kind]:
        return f"{strength.bits:.0f} bits ({strength.kind}; at least {least[strength.kind]})"
    return None


def _describe(strength: Strength) -> str:
    if strength.bits is None:
        return f"{strength.what}: unreadable"
    if strength.kind == "password":
        return f"{strength.length} chars, {len(strength.classes)} classes, ~{strength.bits:.0f} bits"
    return f"{strength.bits:.0f}-bit {strength.kind}"


class _Assessment:
    def __init__(self, policy: PosturePolicy, now: datetime) -> None:
        self.policy, self.now = policy, now
        self.findings: list[Finding] = []

    def add(self, section: Section, severity: Severity, check: str, secret: str | None, what: str, advice: str) -> None:
        self.findings.append(
            Finding(section=section, severity=severity, check=check, secret=secret, what=what, advice=advice)
        )

    def age(
        self, secret: SecretFacts, born: datetime | None, max_age: float, deployments: list[ScheduleFacts]
    ) -> float | None:
        if born is None:
            self.add(
                Section.ROTATED,
                "warn",
                "age-unknown",
                secret.uri,
                "the store gives no date for its CURRENT version, and the journal holds no completed rotation of it",
                "check its age in the store's own console, and rotate it with a runbook so that the journal dates it",
            )
            return None
        exact = (self.now - born).total_seconds() / 86400
        age = round(exact, 1)
        if exact > max_age:
            how = f"run the deployment {deployments[0].deployment}" if deployments else "run its runbook (rotate ...)"
            self.add(
                Section.ROTATED,
                "fail",
                "too-old",
                secret.uri,
                f"CURRENT is {age:g} days old; the policy allows {max_age:g}",
                f"rotate it now: {how}",
            )
        return age

    def schedule(
        self, secret: SecretFacts, born: datetime | None, max_age: float, deployments: list[ScheduleFacts]
    ) -> None:
        if not deployments:
            if self.policy.require_schedule:
                self.add(
                    Section.ROTATED,
                    "fail",
                    "no-schedule",
                    secret.uri,
                    "no Prefect deployment rotates it",
                    "add a deployment for it to prefect.yaml with a cron schedule, deploy it and activate the schedule",
                )
            return
        active = [d for d in deployments if d.active]
        if not active:
            names = ", ".join(d.deployment for d in deployments)
            self.add(
                Section.ROTATED,
                "fail",
                "schedule-inactive",
                secret.uri,
                f"the schedule of {names} is not active: no rotation will start by itself",
                "activate it: "
                + "; ".join(
                    f"prefect deployment schedule resume {d.deployment} {schedule}"
                    for d in deployments
                    for schedule in d.inactive_schedule_ids or ("SCHEDULE_ID",)
                ),
            )
            return
        upcoming = [d.next_at for d in active if d.next_at is not None]
        if upcoming and born is not None:
            limit = born + timedelta(days=max_age)
            if min(upcoming) > limit > self.now:
                self.add(
                    Section.ROTATED,
                    "warn",
                    "next-too-late",
                    secret.uri,
                    f"the next scheduled rotation "
                    f"({min(upcoming):%Y-%m-%d}) comes after CURRENT passes its maximum age ({limit:%Y-%m-%d})",
                    "schedule the deployment more often, or run it once before then",
                )

    def rotation(self, secret: SecretFacts, rotation: RotationFacts | None) -> None:
        if secret.pending_version is not None and (rotation is None or not rotation.holds_lock):
            self.add(
                Section.STUCK,
                "fail",
                "pending-left",
                secret.uri,
                f"version {secret.pending_version} holds PENDING, and no rotation in the journal owns it",
                "if another journal knows the rotation, "
                "resume or roll it back there; else promote or discard that version in the store",
            )
        if rotation is None:
            return
        rid = rotation.rotation_id
        if rotation.state == "running" and not rotation.lease_live:
            self.add(
                Section.STUCK,
                "fail",
                "stuck",
                secret.uri,
                f"rotation {rid} stopped half-done: it holds the "
                f"lock, and no run has held its lease since {rotation.updated_at:%Y-%m-%d %H:%M} UTC",
                f"carry it on with `rotate resume {rid}`, or undo it with `rotate rollback {rid}`",
            )
        elif rotation.state == "waiting" and rotation.due is not None:
            late = self.now - rotation.due
            if late > timedelta(minutes=self.policy.stuck_after_minutes):
                self.add(
                    Section.STUCK,
                    "fail",
                    "stuck",
                    secret.uri,
                    f"rotation {rid} waits for a follow-up run "
                    f"that was due {rotation.due:%Y-%m-%d %H:%M} UTC and has not run",
                    f"check the work pool's worker, then `rotate resume {rid}`",
                )
        elif rotation.state == "failed":
            self.add(
                Section.STUCK,
                "fail",
                "failed",
                secret.uri,
                f"rotation {rid} failed after its point of no return: {rotation.reason or 'see rotate status'}",
                f"fix the cause, then `rotate resume {rid}`",
            )
        elif rotation.state == "rollback-failed":
            self.add(
                Section.STUCK,
                "fail",
                "rollback-failed",
                secret.uri,
                f"the rollback of rotation {rid} stopped half-way: {rotation.reason or 'see rotate status'}",
                f"fix the cause, then `rotate rollback {rid}`",
            )
        elif rotation.state == "rolled-back":
            self.add(
                Section.STUCK,
                "warn",
                "rolled-back",
                secret.uri,
                f"the last rotation ({rid}, "
                f"{rotation.updated_at:%Y-%m-%d}) was rolled back: {rotation.reason or 'no reason recorded'}",
                f"see `rotate status {rid}`, fix the cause and rotate again",
            )

    def strength(self, secret: SecretFacts) -> str | None:
        if secret.value is None:
            return None
        for problem in secret.value.problems:
            self.add(
                Section.STRONG,
                "warn",
                "unreadable",
                secret.uri,
                problem,
                "check the value's format against its runbook's README section",
            )
        weakest = None
        for strength in secret.value.strengths:
            why = _minimum(strength, self.policy)
            if why is not None and strength.bits is not None:
                self.add(
                    Section.STRONG,
                    "fail",
                    "weak",
                    secret.uri,
                    f"{strength.what} is weak: {why}",
                    "rotate it: "
                    "the runbooks generate random values of the policy's size (a password of 32 random bytes, "
                    "an HS256 key of 512 bits, RSA 3072)",
                )
            if strength.bits is not None and (weakest is None or strength.bits < weakest.bits):
                weakest = strength
        return _describe(weakest) if weakest else None

    def certificates(self, secret: SecretFacts) -> float | None:
        if secret.value is None or not secret.value.certificates:
            return None
        soonest = None
        for cert in secret.value.certificates:
            days = _days(cert.not_after - self.now)
            soonest = days if soonest is None else min(soonest, days)
            if days <= 0:
                self.add(
                    Section.CERTIFICATES,
                    "fail",
                    "certificate-expired",
                    secret.uri,
                    f"the certificate of {cert.what} ({cert.fingerprint[:23]}) expired {cert.not_after:%Y-%m-%d}",
                    "rotate the SAML keyset now (the SAML runbook); identity providers refuse an expired certificate",
                )
            elif self.now >= cert.renew_at:
                self.add(
                    Section.CERTIFICATES,
                    "fail",
                    "certificate-expiring",
                    secret.uri,
                    f"the certificate of "
                    f"{cert.what} expires in {days:g} days ({cert.not_after:%Y-%m-%d}); renewal was due "
                    f"{cert.renew_at:%Y-%m-%d}",
                    "rotate the SAML keyset (the SAML runbook) so that identity "
                    "providers read the new certificate before this one expires",
                )
        return soonest

    def backup(self, secret: SecretFacts, backups: list[BackupFacts]) -> float | None:
        if not backups:
            return None
        found = [b.last_backed_up[secret.uri] for b in backups if secret.uri in b.last_backed_up]
        at = max(found) if found else None
        if at is None:
            self.add(
                Section.BACKED_UP,
                "fail",
                "never-backed-up",
                secret.uri,
                f"no backup in {', '.join(b.destination for b in backups)} holds it",
                "add its store (or prefix) to the backup deployment's "
                "source, or run `rotate backup STORE_URI --to DESTINATION ...`",
            )
            return None
        hours = round((self.now - at).total_seconds() / 3600, 1)
        if hours > self.policy.max_backup_age_hours:
            self.add(
                Section.BACKED_UP,
                "fail",
                "backup-old",
                secret.uri,
                f"its newest backup is {hours:g} hours old; the policy allows {self.policy.max_backup_age_hours:g}",
                "check that the backup "
                "deployment runs (its schedule active, its worker up), or run `rotate backup` now",
            )
        return hours

    def drill(self, backups: BackupFacts) -> None:
        drill, where = backups.last_drill, backups.destination
        run = f"rotate drill {where} --gnupg-home DIR"
        if drill is None:
            self.add(
                Section.BACKED_UP,
                "fail",
                "no-drill",
                None,
                f"no restore drill has been recorded in {where}",
                f"prove the backups restore: `{run}`, and activate the restore-drill deployment",
            )
            return
        if drill.result != "passed":
            self.add(
                Section.BACKED_UP,
                "fail",
                "drill-failed",
                None,
                f"the last restore drill ({drill.drill_id}, "
                f"backup {drill.backup_id}) failed: {drill.reason or 'no reason recorded'}",
                f"fix the cause (keys, an altered backup), then `{run}`",
            )
        age = _days(self.now - drill.at)
        if age > self.policy.max_drill_age_days:
            self.add(
                Section.BACKED_UP,
                "fail",
                "drill-old",
                None,
                f"the last restore drill is {age:g} days old; the policy allows {self.policy.max_drill_age_days:g}",
                f"check the restore-drill deployment, or `{run}`",
            )

    def duplicates(self, secrets: list[SecretFacts]) -> dict[str, tuple[str, ...]]:
        environments = {s.uri: s.environment for s in secrets}
        holders: dict[str, dict[str, SecretFacts]] = defaultdict(dict)
        for secret in secrets:
            for print_ in secret.value.fingerprints if secret.value else ():
                holders[print_][secret.uri] = secret
        shared: dict[str, set[str]] = defaultdict(set)
        for group in holders.values():
            if len(group) > 1:
                for uri in group:
                    shared[uri].update(other for other in group if other != uri)
        for secret in secrets:
            others = sorted(shared.get(secret.uri, ()))
            if not others:
                continue
            elsewhere = any(environments[o] != secret.environment for o in others)
            where = "another environment" if elsewhere else "the same environment"
            self.add(
                Section.UNIQUE,
                "fail",
                "duplicate",
                secret.uri,
                f"holds the same secret material as {', '.join(others)} ({where})",
                "rotate one of them, so that each secret (and each "
                "environment) has its own value; a leak of one must not open the other",
            )
        return {uri: tuple(sorted(others)) for uri, others in shared.items()}


def _last_rotation(rotation: RotationFacts | None) -> str | None:
    if rotation is None:
        return None
    text = f"{rotation.state} {rotation.updated_at:%Y-%m-%d}"
    if rotation.state != "completed" and rotation.last_completed_at is not None:
        text += f" (completed {rotation.last_completed_at:%Y-%m-%d})"
    return text


def assess(
    stores: list[str],
    secrets: list[SecretFacts],
    rotations: dict[str, RotationFacts],
    schedules: list[ScheduleFacts],
    backups: list[BackupFacts],
    policy: PosturePolicy,
    now: datetime,
) -> PostureReport:
    """Every check of the checklist over every secret; the report with its table and its findings."""
    run = _Assessment(policy, now)
    duplicates = run.duplicates(secrets)
    rotating: dict[str, list[ScheduleFacts]] = defaultdict(list)
    for schedule in schedules:
        for uri in schedule.secrets:
            rotating[uri].append(schedule)
    rows = []
    for secret in secrets:
        if secret.error is not None:
            run.add(
                Section.ROTATED,
                "fail",
                "store-error",
                secret.uri,
                secret.error,
                "check the store's credentials and that the secret exists; the report could not judge it",
            )
        deployments = rotating.get(secret.uri, [])
        max_age = policy.max_age_of(secret.name, secret.uri)
        rotation = rotations.get(secret.uri)
        # A store that dates no versions (the AWS adapter): CURRENT is as old as the last completed rotation.
        born = secret.current_created_at or (rotation.last_completed_at if rotation else None)
        age = run.age(secret, born, max_age, deployments) if secret.error is None else None
        run.schedule(secret, born, max_age, deployments)
        run.rotation(secret, rotation)
        weakest = run.strength(secret)
        certificate_days = run.certificates(secret)
        backup_hours = run.backup(secret, backups)
        active = [d for d in deployments if d.active]
        upcoming = [d.next_at for d in active if d.next_at is not None]
        rows.append(
            SecretRow(
                secret=secret.uri,
                environment=secret.environment,
                shape=secret.value.shape if secret.value else None,
                age_days=age,
                max_age_days=max_age,
                last_rotation=_last_rotation(rotation),
                next_rotation=min(upcoming) if upcoming else None,
                schedule="active" if active else "inactive" if deployments else "none",
                weakest=weakest,
                duplicates=duplicates.get(secret.uri, ()),
                certificate_days=certificate_days,
                last_backup_hours=backup_hours,
                status="ok",
            )
        )
    for destination in backups:
        run.drill(destination)
    worst: dict[str | None, Severity] = {}
    for finding in run.findings:
        if worst.get(finding.secret) != "fail":
            worst[finding.secret] = finding.severity
    rows = [row.model_copy(update={"status": worst.get(row.secret, "ok")}) for row in rows]
    order = list(Section)
    findings = sorted(run.findings, key=lambda f: (order.index(f.section), f.severity != "fail", f.secret or ""))
    return PostureReport(
        generated_at=now,
        stores=tuple(stores),
        backups=tuple(b.destination for b in backups),
        policy=policy,
        secrets=tuple(rows),
        findings=tuple(findings),
    )
