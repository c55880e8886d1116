"""The posture report for people: table rows (a Prefect table artifact, the terminal table) and markdown."""

from __future__ import annotations

from datetime import datetime

from targets.posture.checks import PostureReport, SecretRow, Section

COLUMNS = (
    "status",
    "secret",
    "kind",
    "age (days)",
    "last rotation",
    "next rotation",
    "strength",
    "duplicates",
    "cert (days)",
    "backup (h)",
)


def _date(at: datetime | None) -> str:
    return f"{at:%Y-%m-%d %H:%M}" if at else ""


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


def row(secret: SecretRow) -> dict[str, str]:
    schedule = {"active": "", "inactive": " (inactive)", "none": "no schedule"}[secret.schedule]
    return dict(
        zip(
            COLUMNS,
            (
                secret.status,
                secret.secret,
                secret.shape or "",
                f"{_number(secret.age_days)} / {secret.max_age_days:g}",
                secret.last_rotation or "never",
                (_date(secret.next_rotation) + schedule).strip(),
                secret.weakest or "",
                ", ".join(secret.duplicates),
                _number(secret.certificate_days),
                _number(secret.last_backup_hours),
            ),
            strict=True,
        )
    )


def table_rows(report: PostureReport) -> list[dict[str, str]]:
    return [row(secret) for secret in report.secrets]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(report: PostureReport) -> str:
    """The findings by section, each with what to do; a section with none says so."""
    counts = report.counts
    verdict = "**policy broken**" if report.policy_broken else "**policy holds**"
    lines = [
        f"# Secret posture, {report.generated_at:%Y-%m-%d %H:%M} UTC",
        "",
        f"{verdict}: {counts['secrets']} secrets in {', '.join(f'`{s}`' for s in report.stores)}; "
        f"{counts['fail']} failed checks, {counts['warn']} warnings."
        + (
            f" Backups: {', '.join(f'`{b}`' for b in report.backups)}."
            if report.backups
            else " Backups: not checked (no destination given)."
        ),
    ]
    for section in Section:
        found = [f for f in report.findings if f.section == section]
        lines += ["", f"## {section.value.capitalize()}", ""]
        if section == Section.BACKED_UP and not report.backups:
            lines.append("Not checked: give the backup destinations (`--backups DEST`).")
            continue
        if not found:
            lines.append("Nothing to do.")
            continue
        lines += ["| | secret | finding | what to do |", "| --- | --- | --- | --- |"]
        lines += [
            f"| {f.severity} | {_cell(f.secret or '(all)')} | {_cell(f.what)} | {_cell(f.advice)} |" for f in found
        ]
    return "\n".join(lines) + "\n"
