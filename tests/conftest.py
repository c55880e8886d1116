"""Shared pytest set-up: every module in tests/fixtures/ is a plugin (servers the tests start)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Prefect reads its settings at import: keep it offline and quiet before anything imports it.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
# A crashed run's rotation may be taken over once its lease expires: keep that wait shorter than the default 30 s,
# yet long enough that a live run on the suite's loaded two cores renews in time (3 s lapsed now and then, and a
# `rotate stage` then took the live run for a stopped one).
os.environ.setdefault("ROTATE_LEASE_SECONDS", "10")
# The suite runs hundreds of flow runs against one SQLite-backed server, which answers 503 ("database is locked")
# when writes collide; the client retries with a growing back-off. More attempts than the default 5 ride out a burst.
os.environ.setdefault("PREFECT_CLIENT_MAX_RETRIES", "8")

pytest_plugins = sorted(
    f"tests.fixtures.{path.stem}"
    for path in (Path(__file__).parent / "fixtures").glob("*.py")
    if path.stem not in ("__init__", "ports")  # ports is a helper module, not a plugin
)


def pytest_terminal_summary(terminalreporter) -> None:
    """Show what the tests measured (``record_property``), so that CI's output reports it."""
    rows = [r for r in terminalreporter.stats.get("passed", []) if r.when == "call" and r.user_properties]
    if rows:
        terminalreporter.section("measured")
        for report in rows:
            terminalreporter.line(f"{report.nodeid}: " + ", ".join(f"{k}={v}" for k, v in report.user_properties))


#: Tests that take minutes each: they are handed out first, so that the workers' short tests fill in around them
#: instead of one long test starting last and running alone at the end.
_LONG_FIRST = ("tests/test_crash_harness.py::test_every_kill_point", "tests/test_ui_browser.py")


@pytest.hookimpl(tryfirst=True)  # before xdist's own, which reads the groups
def pytest_collection_modifyitems(items: list) -> None:
    items.sort(key=lambda item: not item.nodeid.startswith(_LONG_FIRST))  # stable: each keeps its order
    # The tests of the local stack share one (`--dist loadgroup`): each worker that ran one started a stack of its
    # own, about 2 minutes of the two cores each, and kept it running beside the other tests.
    for item in items:
        if "local_stack" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("local-stack"))
