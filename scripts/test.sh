#!/usr/bin/env bash
# Install what the tests need and run the whole suite. The tests start their own servers (PostgreSQL with
# scram-sha-256, redis-server, moto_server, a Prefect server, a pysaml2 identity provider, protocol doubles) on free
# ports and stop them.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v initdb >/dev/null 2>&1 || [ -x "$(pg_config --bindir 2>/dev/null)/initdb" ] || need+=(postgresql)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v gpg >/dev/null 2>&1 || need+=(gnupg)
command -v xmlsec1 >/dev/null 2>&1 || need+=(xmlsec1)
[ -x /usr/bin/chromium ] || need+=(chromium)  # the browser test (tests/test_ui_browser.py)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing system packages: ${need[*]}"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}"
fi

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e ".[dev]"

export PREFECT_SERVER_ANALYTICS_ENABLED=false
# Most of a test is waiting on a server, a lease or a grace period: several workers share the two cores well. Each
# worker starts its own servers (a Prefect server among them); `-n 0` runs everything in one process. The longest
# tests are collected first (tests/conftest.py) and handed out one at a time, so that they start early on separate
# workers and the short ones fill in around them; the tests of the local stack go to one worker, which starts it once.
exec .venv/bin/pytest -n "${TEST_WORKERS:-3}" --dist loadgroup --maxschedchunk 1 "$@"
