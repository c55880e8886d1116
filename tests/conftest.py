"""Shared pytest set-up: every module in tests/fixtures/ is a plugin (servers the tests start)."""

from __future__ import annotations

import os
from pathlib import Path

# Prefect reads its settings at import: keep it offline and quiet before anything imports it.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")

pytest_plugins = sorted(
    f"tests.fixtures.{path.stem}"
    for path in (Path(__file__).parent / "fixtures").glob("*.py")
    if path.stem not in ("__init__", "ports")  # ports is a helper module, not a plugin
)
