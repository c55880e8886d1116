"""``rotate backup`` and ``rotate drill``: bad input is one line and exit status 1 with nothing written; good input
backs up, then drills, and prints ids and counts only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from cli import backup as commands
from stores import open_store
from tests.fixtures.gpg import GpgKeys
from tests.leaks import canary

# The commands as cli/app.py registers them on ``rotate``.
app = typer.Typer(pretty_exceptions_enable=False)
app.command()(commands.backup)
app.command()(commands.drill)


@pytest.fixture
def source(tmp_path: Path) -> tuple[str, str]:
    value = canary()
    open_store(f"local://{tmp_path / 'store.db'}?secret=app/token").create(value)
    return f"local://{tmp_path / 'store.db'}?secret=app/*", value


def _refused(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 1, result.output
    assert result.output.startswith("error:"), result.output
    assert "Traceback" not in result.output
    return " ".join(result.output.split())


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"--recipient": "0" * 40}, "recipient key 0000000000000000000000000000000000000000 is not in gpg home"),
        ({"--recipient": "admin@example.org"}, "is not a full OpenPGP key fingerprint"),
        ({"--signing-key": "outsider"}, "has no secret key in gpg home"),
        ({"--to": "under-a-file"}, "is not a folder"),
        ({"--to": "ftp://host/backups"}, "is not a backup destination"),
        ({"source": "ftp://host/secret"}, "unknown store scheme 'ftp'"),
        ({"source": "local:///srv/store.db?secret=a*b"}, "at most one '*', at the end"),
        (
            {"source": "local:///srv/store.db?secret=nothing/*"},
            "no secret matches local:///srv/store.db?secret=nothing/*",
        ),
    ],
    ids=[
        "unknown-key",
        "address-not-fingerprint",
        "signer-without-secret",
        "unwritable",
        "bad-destination",
        "bad-uri",
        "bad-prefix",
        "no-match",
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    gpg_keys: GpgKeys, tmp_path: Path, source: tuple[str, str], change: dict[str, str], says: str
) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    named = {"outsider": gpg_keys.outsider, "under-a-file": str(tmp_path / "a-file" / "backups")}
    options = {"source": source[0], "--to": str(tmp_path / "backups"), "--recipient": gpg_keys.admin}
    options |= {k: named.get(v, v) for k, v in change.items()}
    args = [options.pop("source"), *(part for item in options.items() for part in item)]
    message = _refused("backup", *args, "--gnupg-home", str(gpg_keys.home))
    assert says in message
    assert source[1] not in message
    assert not (tmp_path / "backups").exists()


def test_backup_then_drill_from_the_command_line(
    prefect_server, gpg_keys: GpgKeys, tmp_path: Path, source: tuple[str, str]
) -> None:
    home = ["--gnupg-home", str(gpg_keys.home)]
    made = CliRunner().invoke(
        app,
        [
            "backup",
            source[0],
            "--to",
            str(tmp_path / "backups"),
            "--recipient",
            gpg_keys.admin,
            "--signing-key",
            gpg_keys.signer,
            "--all-stages",
            *home,
        ],
    )
    assert made.exit_code == 0, made.output
    summary = json.loads(made.stdout)
    assert (summary["secrets"], summary["versions"], summary["signer"]) == (1, 1, gpg_keys.signer)
    drilled = CliRunner().invoke(app, ["drill", str(tmp_path / "backups"), "--signer", gpg_keys.signer, *home])
    assert drilled.exit_code == 0, drilled.output
    assert json.loads(drilled.stdout)["result"] == "passed"
    assert source[1] not in made.output + drilled.output
